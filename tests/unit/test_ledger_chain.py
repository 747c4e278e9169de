"""The ledger's history cannot be swapped under the triggers, and edits behind them are found:
the BEFORE INSERT trigger, the hash chain, ``verify_chain``, and those who check it (resume,
report, ``mlipilot ledger verify``); ledgers from before the chain still work."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from mlipilot.errors import MlipilotError
from mlipilot.ledger import (
    GENESIS,
    BrokenChainError,
    Ledger,
    LedgerEvent,
    check_chain,
    read_events,
    verify_chain,
)


def decision(iteration: int, verdict: str) -> LedgerEvent:
    return LedgerEvent(
        campaign="c1",
        iteration=iteration,
        candidate=f"it{iteration:03d}",
        event="decision",
        decision=verdict,
        reason=f"reason {iteration}",
        composite=1.0 + iteration,
    )


def campaign_rows() -> list[LedgerEvent]:
    """started, BASELINE (id 2), REVERT (id 3), ACCEPT (id 4), finished (id 5)."""
    return [
        LedgerEvent(campaign="c1", event="campaign_started", detail={"campaign": {"x": 1}}),
        decision(0, "BASELINE"),
        decision(1, "REVERT"),
        decision(2, "ACCEPT"),
        LedgerEvent(campaign="c1", event="campaign_finished", status="finished"),
    ]


REVERT_ID = 3


def written(path: Path, events: list[LedgerEvent] | None = None) -> Path:
    with Ledger(path) as ledger:
        ledger.append_all(campaign_rows() if events is None else events)
    return path


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """The sqlite3 CLI's view: a plain connection, autocommit, as a person would edit."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


def drop_triggers(conn: sqlite3.Connection) -> None:
    names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for (name,) in names:
        conn.execute(f"DROP TRIGGER {name}")


def stored_rows(path: Path) -> list[dict[str, object]]:
    with raw(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")]


def independent_hash(row: dict[str, object]) -> str:
    """The documented row format, written out again: a reader in any language can do this."""
    content = {k: v for k, v in row.items() if k != "row_hash" and v is not None}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


# -- the chain as written ---------------------------------------------------------------------


def test_each_row_hashes_what_is_stored_and_chains_to_the_row_before(tmp_path: Path) -> None:
    awkward = LedgerEvent(  # values SQLite stores differently from how Python holds them
        campaign="c1",
        event="evaluation",
        feasible=True,
        violation=-0.0,
        composite=math.nan,
        duration_s=3,
        metrics={"e": math.nan, "f": math.inf},
        hypothesis="ünïcödé \x00 and a NUL",
    )
    path = written(tmp_path / "ledger.sqlite", [*campaign_rows(), awkward])
    rows = stored_rows(path)
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["prev_hash"] == GENESIS
    for before, row in itertools.pairwise(rows):
        assert row["prev_hash"] == before["row_hash"]
    for row in rows:
        assert row["row_hash"] == independent_hash(row)
    report = verify_chain(path)
    assert report.ok and report.first_bad is None
    assert (report.rows, report.legacy_rows, report.head) == (6, 0, rows[-1]["row_hash"])


def test_appends_after_reopening_continue_the_chain(tmp_path: Path) -> None:
    path = written(tmp_path / "ledger.sqlite")
    head = verify_chain(path).head
    with Ledger(path) as ledger:
        assert ledger.append(decision(3, "REVERT")) == 6
    assert stored_rows(path)[-1]["prev_hash"] == head
    assert verify_chain(path).rows == 6


def test_an_empty_ledger_verifies_with_the_genesis_head(tmp_path: Path) -> None:
    path = written(tmp_path / "ledger.sqlite", [])
    report = verify_chain(path)
    assert report.ok and (report.rows, report.legacy_rows, report.head) == (0, 0, GENESIS)


# -- attacks the triggers refuse --------------------------------------------------------------

_FORGED = "(id, ts, campaign, iteration, candidate, event, decision, reason) VALUES "
_FORGED_ROW = "({id}, '2026-01-01', 'c1', 1, 'it001', 'decision', 'ACCEPT', 'forged')"


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT OR REPLACE INTO events " + _FORGED + _FORGED_ROW,
        "REPLACE INTO events " + _FORGED + _FORGED_ROW,
        "INSERT INTO events " + _FORGED + _FORGED_ROW + " ON CONFLICT(id) DO UPDATE SET "
        "decision = excluded.decision",
    ],
    ids=["insert-or-replace", "replace", "upsert"],
)
def test_replacing_a_revert_row_by_its_id_is_refused(tmp_path: Path, sql: str) -> None:
    """REPLACE deletes the old row without firing DELETE triggers: this once turned a REVERT
    into an ACCEPT with both triggers in place."""
    path = written(tmp_path / "ledger.sqlite")
    before = stored_rows(path)
    with raw(path) as conn, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute(sql.format(id=REVERT_ID))
    assert stored_rows(path) == before
    assert read_events(path)[REVERT_ID - 1].decision == "REVERT"
    assert verify_chain(path).ok


@pytest.mark.parametrize("row_id", [0, -5, "NULL"])
def test_a_row_with_an_id_not_above_the_last_is_refused(tmp_path: Path, row_id: object) -> None:
    """Ids 0 and -5 are free (no conflict to stop them); NULL would take the next id unhashed."""
    path = written(tmp_path / "ledger.sqlite")
    with raw(path) as conn, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("INSERT INTO events " + _FORGED + _FORGED_ROW.format(id=row_id))
    assert [r["id"] for r in stored_rows(path)] == [1, 2, 3, 4, 5]


# -- edits behind the triggers' back, found by the chain --------------------------------------


def test_a_raw_update_after_dropping_the_triggers_is_found_at_that_row(tmp_path: Path) -> None:
    path = written(tmp_path / "ledger.sqlite")
    with raw(path) as conn:
        drop_triggers(conn)
        conn.execute("UPDATE events SET decision = 'ACCEPT' WHERE id = ?", (REVERT_ID,))
    report = verify_chain(path)
    assert not report.ok and report.first_bad is not None
    assert (report.first_bad.id, report.first_bad.event) == (REVERT_ID, "decision")
    assert report.first_bad.candidate == "it001"
    assert "content does not match its row_hash" in report.first_bad.problem
    assert report.rows == REVERT_ID
    with pytest.raises(BrokenChainError, match=r"row 3 \(decision, candidate it001\)"):
        check_chain(path)


def test_an_edit_with_its_hash_recomputed_is_found_at_the_next_row(tmp_path: Path) -> None:
    path = written(tmp_path / "ledger.sqlite")
    with raw(path) as conn:
        drop_triggers(conn)
        conn.row_factory = sqlite3.Row
        (row,) = conn.execute("SELECT * FROM events WHERE id = ?", (REVERT_ID,))
        forged = {**dict(row), "decision": "ACCEPT"}
        conn.execute(
            "UPDATE events SET decision = 'ACCEPT', row_hash = ? WHERE id = ?",
            (independent_hash(forged), REVERT_ID),
        )
    bad = verify_chain(path).first_bad
    assert bad is not None and bad.id == REVERT_ID + 1
    assert bad.problem == f"its prev_hash does not match the row_hash of row {REVERT_ID} before it"


def test_a_row_deleted_in_the_middle_is_found(tmp_path: Path) -> None:
    path = written(tmp_path / "ledger.sqlite")
    with raw(path) as conn:
        drop_triggers(conn)
        conn.execute("DELETE FROM events WHERE id = ?", (REVERT_ID,))
    bad = verify_chain(path).first_bad
    assert bad is not None and bad.id == REVERT_ID + 1
    assert f"row {REVERT_ID} is missing" in bad.problem


def test_the_first_rows_deleted_are_found(tmp_path: Path) -> None:
    path = written(tmp_path / "ledger.sqlite")
    with raw(path) as conn:
        drop_triggers(conn)
        conn.execute("DELETE FROM events WHERE id <= 2")
    bad = verify_chain(path).first_bad
    assert bad is not None and bad.id == 3 and "rows 1-2 are missing" in bad.problem


@pytest.mark.parametrize("row_hash", [None, "f" * 64])
def test_a_row_slipped_in_at_the_end_is_found(tmp_path: Path, row_hash: str | None) -> None:
    """The triggers let a new id through (appending is what a ledger is for); its hash must
    still chain."""
    path = written(tmp_path / "ledger.sqlite")
    with raw(path) as conn:
        conn.execute(
            "INSERT INTO events " + _FORGED.replace(") VALUES", ", row_hash) VALUES") + "(6, "
            "'2026-01-01', 'c1', 9, 'it009', 'decision', 'ACCEPT', 'forged', ?)",
            (row_hash,),
        )
    bad = verify_chain(path).first_bad
    assert bad is not None and bad.id == 6


def test_invalid_utf8_written_raw_is_a_mismatch_not_a_crash(tmp_path: Path) -> None:
    path = written(tmp_path / "ledger.sqlite")
    with raw(path) as conn:
        drop_triggers(conn)
        conn.execute("UPDATE events SET reason = CAST(x'ff00' AS TEXT) WHERE id = 2")
    bad = verify_chain(path).first_bad
    assert bad is not None and bad.id == 2


def test_an_unreadable_ledger_is_an_error_that_names_it(tmp_path: Path) -> None:
    path = written(tmp_path / "ledger.sqlite")
    with raw(path) as conn:
        conn.execute("DROP TABLE events")
    with pytest.raises(MlipilotError, match=r"ledger\.sqlite: cannot read the ledger"):
        verify_chain(path)
    with pytest.raises(MlipilotError, match="no ledger there"):
        verify_chain(tmp_path / "absent.sqlite")


# -- mlipilot ledger verify, report, resume ---------------------------------------------------


def tampered_run(run: Path) -> Path:
    written(run / "ledger.sqlite")
    with raw(run / "ledger.sqlite") as conn:
        drop_triggers(conn)
        conn.execute("UPDATE events SET decision = 'ACCEPT' WHERE id = ?", (REVERT_ID,))
    return run


def output(result: Result) -> str:
    """What the command printed, as one line: Rich wraps errors at the terminal's width."""
    return " ".join(result.output.split())


def test_ledger_verify_exit_codes(tmp_path: Path) -> None:
    from mlipilot.cli import app

    good = tmp_path / "good"
    written(good / "ledger.sqlite")
    result = CliRunner().invoke(app, ["ledger", "verify", str(good)])
    assert result.exit_code == 0, result.output
    assert result.output == f"ok: 5 rows, chain head {verify_chain(good / 'ledger.sqlite').head}\n"

    bad = tampered_run(tmp_path / "bad")
    result = CliRunner().invoke(app, ["ledger", "verify", str(bad)])
    assert result.exit_code == 1
    assert "row 3 (decision, candidate it001): its content does not match" in output(result)

    result = CliRunner().invoke(app, ["ledger", "verify", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no ledger there" in output(result)


def test_report_refuses_a_broken_chain(tmp_path: Path) -> None:
    from mlipilot.cli import app
    from mlipilot.report.ledger_view import load_run

    run = tampered_run(tmp_path / "run")
    with pytest.raises(BrokenChainError, match=r"run/ledger.sqlite: .* row 3 \(decision"):
        load_run(run)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 1 and "hash chain is broken at row 3 (decision" in output(result)
    assert not (run / "report.html").exists()
    # An intact chain gets past the check (to the scorecard this folder lacks).
    intact = tmp_path / "intact"
    written(intact / "ledger.sqlite")
    result = CliRunner().invoke(app, ["report", str(intact)])
    assert result.exit_code == 2 and "no scorecard.yaml there" in output(result)


def test_resume_refuses_a_broken_chain_before_anything_else(tmp_path: Path) -> None:
    from mlipilot.campaign.loop import resume_campaign

    run = tampered_run(tmp_path / "run")
    with pytest.raises(MlipilotError, match=r"run/ledger.sqlite: .*broken at row 3 \(decision"):
        resume_campaign(run)
    # Refused before taking the writer's lock or making a candidate folder, let alone training.
    assert [p.name for p in run.iterdir() if not p.name.startswith("ledger.sqlite")] == []
    assert len(read_events(run / "ledger.sqlite")) == 5  # no campaign_resumed row either
    # The same folder with an intact ledger gets past the check, to its missing campaign file.
    intact = tmp_path / "intact"
    written(intact / "ledger.sqlite")
    with pytest.raises(MlipilotError, match="cannot read the campaign as run"):
        resume_campaign(intact)


# -- ledgers written before the hash chain ----------------------------------------------------

# The schema as it was before the hash chain: no hash columns, no INSERT trigger.
_LEGACY_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, campaign TEXT NOT NULL,
    iteration INTEGER, candidate TEXT, event TEXT NOT NULL, agent TEXT, hypothesis TEXT,
    patch TEXT, recipe TEXT, recipe_hash TEXT, status TEXT, metrics TEXT, feasible INTEGER,
    violation REAL, composite REAL, decision TEXT, reason TEXT, spec_hash TEXT,
    train_hash TEXT, test_hash TEXT, started_at TEXT, finished_at TEXT, duration_s REAL,
    detail TEXT
);
CREATE INDEX events_by_candidate ON events (campaign, candidate);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"""


def legacy_ledger(path: Path) -> Path:
    """Three rows as the old writer stored them (ids by AUTOINCREMENT, JSON as text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with raw(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_LEGACY_SCHEMA)
        for iteration, verdict in ((0, "BASELINE"), (1, "REVERT"), (2, "ACCEPT")):
            conn.execute(
                "INSERT INTO events (ts, campaign, iteration, candidate, event, decision, "
                "metrics, feasible) VALUES ('2025-01-01', 'c1', ?, ?, 'decision', ?, ?, 1)",
                (iteration, f"it{iteration:03d}", verdict, json.dumps({"e": 0.5})),
            )
    return path


def test_a_legacy_ledger_reads_and_verifies_as_unverified(tmp_path: Path) -> None:
    path = legacy_ledger(tmp_path / "run" / "ledger.sqlite")
    assert [e.decision for e in read_events(path)] == ["BASELINE", "REVERT", "ACCEPT"]
    report = verify_chain(path)
    assert report.ok and (report.rows, report.legacy_rows) == (3, 3)
    from mlipilot.cli import app

    result = CliRunner().invoke(app, ["ledger", "verify", str(path.parent)])
    assert result.exit_code == 0
    assert result.output.splitlines()[1] == (
        "unverified: the first 3 rows (written before the hash chain)"
    )


def test_a_legacy_ledger_takes_chained_appends_anchored_to_its_old_rows(tmp_path: Path) -> None:
    path = legacy_ledger(tmp_path / "ledger.sqlite")
    anchor = verify_chain(path).head
    with Ledger(path) as ledger:  # the writer adds the hash columns and the INSERT trigger
        assert ledger.append(decision(3, "REVERT")) == 4
        assert [e.decision for e in ledger.events()][-2:] == ["ACCEPT", "REVERT"]
    rows = stored_rows(path)
    assert [r["row_hash"] is None for r in rows] == [True, True, True, False]
    assert rows[3]["prev_hash"] == anchor != GENESIS
    report = verify_chain(path)
    assert report.ok and (report.rows, report.legacy_rows) == (4, 3)
    with raw(path) as conn, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("INSERT OR REPLACE INTO events " + _FORGED + _FORGED_ROW.format(id=2))


def test_an_old_row_changed_after_the_chain_began_is_found(tmp_path: Path) -> None:
    """The first chained row anchors to every old row, so none can change unnoticed since."""
    path = legacy_ledger(tmp_path / "ledger.sqlite")
    with Ledger(path) as ledger:
        ledger.append(decision(3, "REVERT"))
    with raw(path) as conn:
        drop_triggers(conn)
        conn.execute("UPDATE events SET decision = 'ACCEPT' WHERE id = 2")
    bad = verify_chain(path).first_bad
    assert bad is not None and bad.id == 4
    assert "the 3 rows before it, written before the hash chain" in bad.problem


def test_an_unhashed_row_after_chained_ones_is_found(tmp_path: Path) -> None:
    """Blanking one row's hashes does not pass it off as written before the chain."""
    path = written(tmp_path / "ledger.sqlite")
    with raw(path) as conn:
        drop_triggers(conn)
        conn.execute("UPDATE events SET prev_hash = NULL, row_hash = NULL WHERE id = 3")
    bad = verify_chain(path).first_bad
    assert bad is not None and bad.id == 3 and "no row_hash" in bad.problem
