"""The audit ledger: one SQLite file per campaign, append-only, one row per event.

It is autoresearch's ``results.tsv`` grown up: fixed columns a person can query, JSON for the
rest, crashes recorded as rows. WAL mode with synchronous=FULL and one transaction per batch of
rows, so a crash leaves either the whole batch or none of it.

Two defences keep the history as it was written:

- Triggers refuse UPDATE, DELETE and any INSERT whose id is not above the last one; the last is
  what stops ``INSERT OR REPLACE`` of an existing id, whose implicit delete fires no trigger.
- A hash chain: each row stores ``prev_hash`` (the ``row_hash`` of the row before it, ``GENESIS``
  for the first) and its own ``row_hash`` (see ``row_hash()``). ``verify_chain()`` recomputes it
  read-only and names the first row that was changed, removed or slipped in, e.g. by someone
  who dropped the triggers. Without a secret key it detects edits by anyone who does not also
  recompute every later hash; the head hash, kept elsewhere, detects even that, and the loss
  of rows at the end.

Ledgers written before the hash chain (no hash columns) still open, read and resume: the writer
adds the two columns, NULL in the old rows, which ``verify_chain()`` counts as unverified; the
first chained row is anchored to all of them (see ``Ledger._head``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlipilot.errors import MlipilotError
from mlipilot.ledger.events import EventKind, LedgerEvent

_JSON_COLUMNS = ("patch", "recipe", "metrics", "detail")
_REAL_COLUMNS = ("violation", "composite", "duration_s")
_CHAIN_COLUMNS = ("prev_hash", "row_hash")
GENESIS = "0" * 64  # the prev_hash of a ledger's first row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          TEXT NOT NULL,
    campaign    TEXT NOT NULL,
    iteration   INTEGER,
    candidate   TEXT,
    event       TEXT NOT NULL,
    agent       TEXT,
    hypothesis  TEXT,
    patch       TEXT,
    recipe      TEXT,
    recipe_hash TEXT,
    status      TEXT,
    metrics     TEXT,
    feasible    INTEGER,
    violation   REAL,
    composite   REAL,
    decision    TEXT,
    reason      TEXT,
    spec_hash   TEXT,
    train_hash  TEXT,
    test_hash   TEXT,
    started_at  TEXT,
    finished_at TEXT,
    duration_s  REAL,
    detail      TEXT,
    prev_hash   TEXT,
    row_hash    TEXT
);
CREATE INDEX IF NOT EXISTS events_by_candidate ON events (campaign, candidate);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_only_after_the_last BEFORE INSERT ON events
WHEN NEW.id IS NULL OR NEW.id <= (SELECT coalesce(max(id), 0) FROM events)
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: a new row needs an id above the last');
END;
"""
# An INSERT without an id is refused too (SQLite shows it to the trigger as NULL or -1): every
# row the writer adds names its id, which its hash covers.


def row_hash(row: Mapping[str, Any]) -> str:
    """The sha256 (hex) of a row as stored: every column but ``row_hash``, including ``id``
    and ``prev_hash``, as one JSON object with sorted keys, compact separators and ASCII
    escapes; NULL columns are left out, so a column added later (NULL in older rows) does not
    change their hashes. JSON columns enter as the strings stored, floats as Python's repr.
    A BLOB (never written by the ledger) enters as ``"blob:<hex>"``."""
    content = {k: v for k, v in row.items() if k != "row_hash" and v is not None}
    text = json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_blob
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _blob(value: object) -> str:
    if isinstance(value, bytes):
        return "blob:" + value.hex()
    raise TypeError(f"a ledger column holds a {type(value).__name__}")


def _storable(column: str, value: Any) -> Any:
    """``value`` as SQLite will give it back, so the hash taken before the INSERT is the one a
    reader recomputes: booleans are integers, NaN is NULL, -0.0 is 0.0, REAL columns float."""
    if isinstance(value, bool):
        return int(value)
    if column in _REAL_COLUMNS and isinstance(value, int):
        value = float(value)
    if isinstance(value, float):
        return None if math.isnan(value) else value + 0.0  # -0.0 + 0.0 == +0.0
    return value


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._add_chain_columns()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _missing_chain_columns(self) -> list[str]:
        have = {r["name"] for r in self._conn.execute("PRAGMA table_info(events)")}
        return [c for c in _CHAIN_COLUMNS if c not in have]

    def _add_chain_columns(self) -> None:
        """A ledger from before the hash chain gets its columns, NULL in the old rows."""
        if not self._missing_chain_columns():
            return
        self._conn.execute("BEGIN IMMEDIATE")  # another process may be adding them too
        try:
            for column in self._missing_chain_columns():
                self._conn.execute(f"ALTER TABLE events ADD COLUMN {column} TEXT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def append(self, event: LedgerEvent) -> int:
        [row_id] = self.append_all([event])
        return row_id

    def append_all(self, events: list[LedgerEvent]) -> list[int]:
        """Several rows in one transaction: after a crash, all of them are there or none."""
        if not events:
            return []
        rows = []
        # The connection is in autocommit mode (isolation_level=None): without an explicit
        # BEGIN each INSERT would be a transaction of its own. IMMEDIATE takes the write lock
        # before the last id and hash are read, so nobody can append in between.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            last_id, head = self._head()
            for event in events:
                row = _stored_row(event, last_id + 1, head)
                columns = ", ".join(row)
                marks = ", ".join(f":{c}" for c in row)
                self._conn.execute(f"INSERT INTO events ({columns}) VALUES ({marks})", row)
                last_id, head = row["id"], row["row_hash"]
                rows.append(row)
            self._check_read_back(rows)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return [row["id"] for row in rows]

    def _head(self) -> tuple[int, str]:
        """The last row's id and the hash the next row chains to."""
        last = self._conn.execute(
            "SELECT id, row_hash FROM events ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if last is None:
            return 0, GENESIS
        if last["row_hash"] is not None:
            return last["id"], last["row_hash"]
        # The last row was written before the hash chain. The first chained row is anchored
        # to ALL the rows before it, not just the last: their hashes are computed as if they
        # had been chained from GENESIS (each with prev_hash = the hash before it), and the
        # last of those is its prev_hash. From then on, a change to any of the old rows
        # breaks the chain at that first chained row (which cannot say which old row it was).
        # Read once per ledger: afterwards the last row has a hash.
        head = GENESIS
        for row in self._conn.execute("SELECT * FROM events ORDER BY id"):
            head = row["row_hash"] or _legacy_hash(dict(row), head)
        return last["id"], head

    def _check_read_back(self, rows: list[dict[str, Any]]) -> None:
        """The rows as stored must hash as written: a value SQLite stores differently from
        what ``_storable`` expects would otherwise make an honest row look tampered with."""
        stored = self._conn.execute(
            "SELECT * FROM events WHERE id BETWEEN ? AND ? ORDER BY id",
            (rows[0]["id"], rows[-1]["id"]),
        ).fetchall()
        for written, back in zip(rows, map(dict, stored), strict=True):
            if row_hash(back) != written["row_hash"]:
                changed = sorted(c for c in written if back.get(c) != written[c])
                raise RuntimeError(
                    f"{self.path}: row {written['id']} reads back differently in {changed} "
                    "than it was hashed; a bug in mlipilot.ledger.store._storable"
                )

    def events(
        self, event: EventKind | None = None, *, candidate: str | None = None
    ) -> list[LedgerEvent]:
        """The rows in order, of one kind and of one candidate when given."""
        where = {"event": event, "candidate": candidate}
        clauses = [f"{column} = ?" for column, value in where.items() if value is not None]
        query = "SELECT * FROM events" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        args = tuple(value for value in where.values() if value is not None)
        rows = self._conn.execute(query + " ORDER BY id", args).fetchall()
        return [_from_row(r) for r in rows]

    def export_tsv(self, path: Path) -> None:
        """The decision rows as a flat table (autoresearch's results.tsv)."""
        columns = ["iteration", "candidate", "decision", "composite", "violation", "feasible"]
        columns += ["recipe_hash", "reason", "hypothesis"]
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
            writer.writerow(columns)
            for e in self.events("decision"):
                writer.writerow([_tsv_cell(getattr(e, c)) for c in columns])


def _stored_row(event: LedgerEvent, row_id: int, prev_hash: str) -> dict[str, Any]:
    """The columns of ``event`` as they will be stored, chained to ``prev_hash``."""
    row: dict[str, Any] = {"id": row_id, **event.model_dump(exclude={"id"})}
    for column in _JSON_COLUMNS:
        if row[column] is not None:
            row[column] = json.dumps(row[column], sort_keys=True, default=str)
    row = {column: _storable(column, value) for column, value in row.items()}
    row["prev_hash"] = prev_hash
    row["row_hash"] = row_hash(row)
    return row


def _legacy_hash(row: dict[str, Any], prev: str) -> str:
    """A row written before the hash chain, hashed as if it had been chained to ``prev``."""
    return row_hash({**row, "prev_hash": prev})


def read_events(path: Path, after_id: int = 0) -> list[LedgerEvent]:
    """The events of the ledger at ``path`` with id > ``after_id``, read-only.

    For readers beside the writer (a watcher streaming a live campaign): WAL lets them read
    while the campaign appends, and a read-only connection can never change the history.
    """
    if not path.exists():
        raise FileNotFoundError(path)
    conn = _read_only(path)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM events WHERE id > ? ORDER BY id", (after_id,))
        return [_from_row(r) for r in rows.fetchall()]
    finally:
        conn.close()


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


@dataclass(frozen=True)
class BadRow:
    """The first row at which a ledger's hash chain breaks, and why."""

    id: int
    event: str | None
    candidate: str | None
    problem: str

    def describe(self) -> str:
        who = f"row {self.id} ({self.event or 'no event kind'}"
        who += f", candidate {self.candidate})" if self.candidate else ")"
        return f"{who}: {self.problem}"


@dataclass(frozen=True)
class ChainReport:
    """What ``verify_chain`` found: ``rows`` read (up to the first bad one, if any), of which
    ``legacy_rows`` were written before the hash chain; ``head`` is the hash the next row
    chains to (that of the last good row)."""

    rows: int
    legacy_rows: int
    head: str
    first_bad: BadRow | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad is None


class BrokenChainError(MlipilotError):
    """A ledger whose hash chain is broken: it was changed after it was written."""

    def __init__(self, path: Path, report: ChainReport) -> None:
        assert report.first_bad is not None
        super().__init__(
            f"{path}: the ledger's hash chain is broken at {report.first_bad.describe()}. "
            "The ledger was changed outside mlipilot: restore it from a copy "
            f"(`mlipilot ledger verify {path.parent}` checks one)"
        )
        self.report = report


def verify_chain(path: Path) -> ChainReport:
    """Recompute the hash chain of the ledger at ``path``, read-only; stop at the first bad
    row. Raises ``MlipilotError`` for a missing or unreadable ledger (no events table)."""
    if not path.is_file():
        raise MlipilotError(f"{path}: no ledger there")
    conn = _read_only(path)
    # Text that is not UTF-8 (only a raw edit writes it) must hash as a mismatch, not crash.
    conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    try:
        cursor = conn.execute("SELECT * FROM events ORDER BY id")
        names = [d[0] for d in cursor.description]
        return _walk(dict(zip(names, values, strict=True)) for values in cursor)
    except sqlite3.DatabaseError as exc:
        raise MlipilotError(f"{path}: cannot read the ledger: {exc}") from exc
    finally:
        conn.close()


def check_chain(path: Path) -> ChainReport:
    """``verify_chain``, raising ``BrokenChainError`` (naming the first bad row) if broken."""
    report = verify_chain(path)
    if not report.ok:
        raise BrokenChainError(path, report)
    return report


def _walk(rows: Iterable[dict[str, Any]]) -> ChainReport:
    head, previous, count, legacy, chained = GENESIS, None, 0, 0, False
    for row in rows:
        count += 1
        problem = _problem(row, head, previous, legacy, chained)
        if problem is not None:
            event, candidate = row.get("event"), row.get("candidate")
            bad = BadRow(
                row["id"],
                None if event is None else str(event),
                None if candidate is None else str(candidate),
                problem,
            )
            return ChainReport(count, legacy, head, bad)
        if row.get("row_hash") is None:
            legacy += 1
            head = _legacy_hash(row, head)
        else:
            chained = True
            head = row["row_hash"]
        previous = row["id"]
    return ChainReport(count, legacy, head)


def _problem(
    row: dict[str, Any], head: str, previous: int | None, legacy: int, chained: bool
) -> str | None:
    """What is wrong with ``row`` given the chain before it, or None."""
    if row.get("row_hash") is None:
        if chained:
            return "it has no row_hash, though rows before it are chained"
        if row.get("prev_hash") is not None:
            return "it has a prev_hash but no row_hash"
        return None  # written before the hash chain: unverified
    # Rows come in id order (the primary key), so ids always increase; a gap is a lost row.
    expected = 1 if previous is None else previous + 1
    if row["id"] != expected:
        last = row["id"] - 1
        lost = f"row {expected} is" if last == expected else f"rows {expected}-{last} are"
        return f"{lost} missing before it"
    if row_hash(row) != row["row_hash"]:
        return "its content does not match its row_hash"
    if row.get("prev_hash") != head:
        if not chained and legacy:
            return (
                f"its prev_hash does not match the {legacy} rows before it, written before "
                "the hash chain: one of them was changed since"
            )
        if previous is None:
            return "its prev_hash is not the chain's start (GENESIS), yet it is the first row"
        return f"its prev_hash does not match the row_hash of row {previous} before it"
    return None


def _tsv_cell(value: object) -> str:
    """One line per decision, whatever a reason or hypothesis contains."""
    if value is None:
        return ""
    return " ".join(str(value).split())


def _from_row(row: sqlite3.Row) -> LedgerEvent:
    data = dict(row)
    for column in _CHAIN_COLUMNS:  # the chain is the ledger's business, not the event's
        data.pop(column, None)
    for column in _JSON_COLUMNS:
        if data[column] is not None:
            data[column] = json.loads(data[column])
    if data["feasible"] is not None:
        data["feasible"] = bool(data["feasible"])
    return LedgerEvent.model_validate(data)
