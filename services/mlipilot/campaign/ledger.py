"""The audit ledger: one SQLite file per campaign, append-only, one row per event.

It is autoresearch's ``results.tsv`` grown up: fixed columns a person can query, JSON for the
rest, crashes recorded as rows. WAL mode with synchronous=FULL and one transaction per row, so
a crash leaves either the whole row or none of it; triggers refuse UPDATE and DELETE so the
history cannot be rewritten.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

EventKind = Literal[
    "campaign_started",
    "campaign_resumed",  # a later process took over an unfinished campaign (--resume, restart)
    "iteration_started",
    "proposal",
    "repeat",  # noise-aware acceptance: a recipe trained again with another seed (detail)
    "agent_failure",
    "agent_call",  # one conversation with an LLM agent: its messages and tokens (detail)
    "progress",  # training epochs and scorecard stages, so a watcher sees work in flight
    "training",
    "evaluation",
    "decision",
    "campaign_finished",
]

_JSON_COLUMNS = ("patch", "recipe", "metrics", "detail")

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
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS events_by_candidate ON events (campaign, candidate);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class LedgerEvent(BaseModel):
    id: int | None = None
    ts: str = Field(default_factory=utc_now)
    campaign: str
    iteration: int | None = None
    candidate: str | None = None
    event: EventKind
    agent: str | None = None
    hypothesis: str | None = None
    patch: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    recipe_hash: str | None = None
    status: str | None = None
    metrics: dict[str, float] | None = None
    feasible: bool | None = None
    violation: float | None = None
    composite: float | None = None
    decision: str | None = None
    reason: str | None = None
    spec_hash: str | None = None
    train_hash: str | None = None
    test_hash: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    detail: dict[str, Any] | None = None


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, event: LedgerEvent) -> int:
        [row_id] = self.append_all([event])
        return row_id

    def append_all(self, events: list[LedgerEvent]) -> list[int]:
        """Several rows in one transaction: after a crash, all of them are there or none."""
        ids = []
        # The connection is in autocommit mode (isolation_level=None): without an explicit
        # BEGIN each INSERT would be a transaction of its own.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for event in events:
                row = event.model_dump(exclude={"id"})
                for column in _JSON_COLUMNS:
                    if row[column] is not None:
                        row[column] = json.dumps(row[column], sort_keys=True, default=str)
                columns = ", ".join(row)
                marks = ", ".join(f":{c}" for c in row)
                cur = self._conn.execute(f"INSERT INTO events ({columns}) VALUES ({marks})", row)
                assert cur.lastrowid is not None
                ids.append(cur.lastrowid)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return ids

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


def read_events(path: Path, after_id: int = 0) -> list[LedgerEvent]:
    """The events of the ledger at ``path`` with id > ``after_id``, read-only.

    For readers beside the writer (a watcher streaming a live campaign): WAL lets them read
    while the campaign appends, and a read-only connection can never change the history.
    """
    if not path.exists():
        raise FileNotFoundError(path)
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM events WHERE id > ? ORDER BY id", (after_id,))
        return [_from_row(r) for r in rows.fetchall()]
    finally:
        conn.close()


def ending(events: list[LedgerEvent]) -> LedgerEvent | None:
    """How the campaign's latest run ended: its last ``campaign_finished`` row, unless a
    ``campaign_resumed`` row came after it (then it is running again, or was killed)."""
    for event in reversed(events):
        if event.event == "campaign_finished":
            return event
        if event.event == "campaign_resumed":
            return None
    return None


def _tsv_cell(value: object) -> str:
    """One line per decision, whatever a reason or hypothesis contains."""
    if value is None:
        return ""
    return " ".join(str(value).split())


def _from_row(row: sqlite3.Row) -> LedgerEvent:
    data = dict(row)
    for column in _JSON_COLUMNS:
        if data[column] is not None:
            data[column] = json.loads(data[column])
    if data["feasible"] is not None:
        data["feasible"] = bool(data["feasible"])
    return LedgerEvent.model_validate(data)
