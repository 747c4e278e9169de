"""The append-only SQLite ledger: round trips, filtering, immutability, TSV export."""

from __future__ import annotations

import csv
import math
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlipilot.ledger import Ledger, LedgerEvent, ending, read_events


def decision(iteration: int, verdict: str, **fields: object) -> LedgerEvent:
    return LedgerEvent.model_validate(
        {
            "campaign": "c1",
            "iteration": iteration,
            "candidate": f"c{iteration:03d}",
            "event": "decision",
            "decision": verdict,
            "reason": f"reason {iteration}",
            **fields,
        }
    )


def full_event() -> LedgerEvent:
    return LedgerEvent(
        campaign="c1",
        iteration=3,
        candidate="c003",
        event="evaluation",
        agent="rule-based",
        hypothesis="[widen-cutoff] MD collapsed",
        patch={"r_max": 5.0, "ema": True, "scaling": "std_scaling"},
        recipe={"r_max": 5.0, "nested": {"a": [1, 2]}},
        recipe_hash="ab" * 32,
        status="ok",
        metrics={"energy": 1.5, "drift": math.inf, "neg": -math.inf},
        feasible=False,
        violation=0.25,
        composite=3.5,
        spec_hash="s" * 64,
        train_hash="t" * 64,
        test_hash="u" * 64,
        started_at="2026-01-01T00:00:00.000+00:00",
        finished_at="2026-01-01T00:01:00.000+00:00",
        duration_s=60.0,
        detail={"curve": [1.0, 0.5], "log": "train.log", "ok": None},
    )


def test_row_round_trips_with_json_fields(tmp_path: Path) -> None:
    event = full_event()
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        row_id = ledger.append(event)
        (back,) = ledger.events()
    assert back.id == row_id
    assert back.model_dump(exclude={"id"}) == event.model_dump(exclude={"id"})
    assert back.metrics is not None
    assert back.metrics["drift"] == math.inf
    assert back.metrics["neg"] == -math.inf
    assert back.feasible is False
    assert back.patch == {"r_max": 5.0, "ema": True, "scaling": "std_scaling"}
    assert back.detail == {"curve": [1.0, 0.5], "log": "train.log", "ok": None}


def test_nan_metric_survives(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.append(LedgerEvent(campaign="c1", event="evaluation", metrics={"e": math.nan}))
        (back,) = ledger.events()
    assert back.metrics is not None
    assert math.isnan(back.metrics["e"])


def test_minimal_row_keeps_nulls(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.append(LedgerEvent(campaign="c1", event="campaign_started"))
        (back,) = ledger.events()
    assert back.event == "campaign_started"
    assert back.patch is None
    assert back.metrics is None
    assert back.feasible is None
    assert back.ts  # filled in on creation


def test_ids_increase(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ids = [ledger.append(decision(i, "REVERT")) for i in range(5)]
        assert ids == sorted(ids)
        assert len(set(ids)) == 5
        assert [e.id for e in ledger.events()] == ids
        assert [e.iteration for e in ledger.events()] == list(range(5))


def test_events_filters_by_kind(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.append(LedgerEvent(campaign="c1", event="campaign_started"))
        ledger.append(LedgerEvent(campaign="c1", iteration=1, event="proposal"))
        ledger.append(decision(1, "ACCEPT"))
        ledger.append(LedgerEvent(campaign="c1", iteration=2, event="proposal"))
        ledger.append(decision(2, "REVERT"))
        decisions = ledger.events("decision")
        assert [(e.iteration, e.decision) for e in decisions] == [(1, "ACCEPT"), (2, "REVERT")]
        assert all(e.event == "decision" for e in decisions)
        assert len(ledger.events("proposal")) == 2
        assert ledger.events("training") == []
        assert len(ledger.events()) == 5


def test_events_filters_by_candidate(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        for name, status in (("it001", "ok"), ("it002", "ok"), ("it001", "failed")):
            ledger.append(
                LedgerEvent(campaign="c1", event="training", candidate=name, status=status)
            )
        ledger.append(LedgerEvent(campaign="c1", event="evaluation", candidate="it001"))
        trainings = ledger.events("training", candidate="it001")
        assert [(e.candidate, e.status) for e in trainings] == [
            ("it001", "ok"),
            ("it001", "failed"),
        ]
        assert [e.event for e in ledger.events(candidate="it001")] == ["training"] * 2 + [
            "evaluation"
        ]
        assert ledger.events("training", candidate="it009") == []


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET decision = 'ACCEPT' WHERE id = 1",
        "DELETE FROM events WHERE id = 1",
        "DELETE FROM events",
    ],
    ids=["update", "delete-one", "delete-all"],
)
def test_history_cannot_be_rewritten(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.append(decision(1, "REVERT"))
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
        conn.rollback()
    finally:
        conn.close()
    with Ledger(path) as ledger:
        (row,) = ledger.events()
    assert row.decision == "REVERT"


def test_journal_mode_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path):
        pass
    conn = sqlite3.connect(path)
    try:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.close()
    assert mode == "wal"


def test_creates_the_parent_folder(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "c1" / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.append(decision(0, "BASELINE"))
    assert path.is_file()


def test_reopening_keeps_rows_and_appends_after_them(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        first = ledger.append(decision(0, "BASELINE"))
        ledger.append(decision(1, "ACCEPT"))
    with Ledger(path) as ledger:
        assert [e.decision for e in ledger.events()] == ["BASELINE", "ACCEPT"]
        third = ledger.append(decision(2, "REVERT"))
        assert third > first
        assert len(ledger.events()) == 3
    # A plain reader (no WAL knowledge) sees every committed row too.
    conn = sqlite3.connect(path)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
    finally:
        conn.close()
    assert count == 3


def test_export_tsv_has_a_header_and_one_line_per_decision(tmp_path: Path) -> None:
    out = tmp_path / "results.tsv"
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.append(LedgerEvent(campaign="c1", event="campaign_started"))
        ledger.append(
            decision(0, "BASELINE", composite=3.0, violation=0.0, feasible=True, recipe_hash="h0")
        )
        ledger.append(LedgerEvent(campaign="c1", iteration=1, event="proposal"))
        ledger.append(
            decision(
                1,
                "REVERT",
                feasible=False,
                violation=0.5,
                hypothesis="[ema] smooth the end",
                recipe_hash="h1",
            )
        )
        ledger.export_tsv(out)
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert list(rows[0]) == [
        "iteration",
        "candidate",
        "decision",
        "composite",
        "violation",
        "feasible",
        "recipe_hash",
        "reason",
        "hypothesis",
    ]
    assert [r["decision"] for r in rows] == ["BASELINE", "REVERT"]
    assert rows[0]["composite"] == "3.0"
    assert rows[0]["hypothesis"] == ""  # None is written as an empty cell
    assert rows[1]["composite"] == ""
    assert rows[1]["hypothesis"] == "[ema] smooth the end"
    assert rows[1]["candidate"] == "c001"


def test_export_tsv_of_an_empty_ledger_is_just_the_header(tmp_path: Path) -> None:
    out = tmp_path / "results.tsv"
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.export_tsv(out)
    assert out.read_text().count("\n") == 1
    assert out.read_text().startswith("iteration\tcandidate\tdecision\t")


def test_export_tsv_keeps_one_line_per_decision_for_multiline_reasons(tmp_path: Path) -> None:
    out = tmp_path / "results.tsv"
    reason = "candidate failed: scoring failed: MlipilotError: spec: md.seeds: bad\nspec: x: bad"
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.append(decision(1, "REVERT", reason=reason, hypothesis="a\tb"))
        ledger.export_tsv(out)
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    assert len(lines[1].split("\t")) == 9


def test_read_events_after_a_position_while_the_writer_is_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ids = [ledger.append(LedgerEvent(campaign="c", event="proposal")) for _ in range(3)]
        assert [e.id for e in read_events(path)] == ids
        assert [e.id for e in read_events(path, after_id=ids[0])] == ids[1:]
        assert read_events(path, after_id=ids[-1]) == []
        ledger.append(LedgerEvent(campaign="c", event="decision", decision="ACCEPT"))
        later = read_events(path, after_id=ids[-1])
        assert [e.decision for e in later] == ["ACCEPT"]


def test_read_events_of_a_missing_ledger_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_events(tmp_path / "absent.sqlite")


# Appends batches of three big rows until killed; prints each batch's number once committed.
_WRITER = """
import sys
from pathlib import Path
from mlipilot.ledger import Ledger, LedgerEvent
ledger = Ledger(Path(sys.argv[1]))
for batch in range(100_000):
    ledger.append_all(
        [LedgerEvent(campaign="c", event="progress", iteration=batch, candidate=f"r{i}",
                     detail={"pad": "x" * 20_000, "i": i}) for i in range(3)]
    )
    print(batch, flush=True)
"""


def test_a_writer_killed_mid_append_leaves_whole_batches_only(tmp_path: Path) -> None:
    """kill -9 while rows are being written: SQLite's journal keeps every committed batch
    whole and drops the torn one; the ledger stays readable and appendable."""
    path = tmp_path / "ledger.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    committed = [int(proc.stdout.readline()) for _ in range(20)]  # 20 batches are durable
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    rows = read_events(path)
    assert len(rows) % 3 == 0 and len(rows) >= 3 * len(committed)
    for batch in range(len(rows) // 3):
        got = rows[3 * batch : 3 * batch + 3]
        assert [(e.iteration, e.candidate) for e in got] == [(batch, f"r{i}") for i in range(3)]
        assert all(len(e.detail["pad"]) == 20_000 for e in got)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    with Ledger(path) as ledger:
        assert ledger.append(decision(9, "ACCEPT")) == rows[-1].id + 1


def test_a_failed_batch_writes_nothing(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.append(decision(0, "BASELINE"))
        bad = decision(2, "REVERT").model_copy(update={"campaign": None})  # NOT NULL column
        with pytest.raises(sqlite3.IntegrityError):
            ledger.append_all([decision(1, "ACCEPT"), bad])
        assert [e.iteration for e in ledger.events()] == [0]
        ledger.append(decision(1, "ACCEPT"))  # and the connection is usable after it


def test_ending_is_the_last_finish_unless_a_resume_followed() -> None:
    def row(kind: str, status: str | None = None) -> LedgerEvent:
        return LedgerEvent(campaign="c", event=kind, status=status)

    started, resumed = row("campaign_started"), row("campaign_resumed")
    interrupted, finished = (
        row("campaign_finished", "interrupted"),
        row("campaign_finished", "finished"),
    )
    assert ending([started]) is None
    assert ending([started, interrupted]) is interrupted
    assert ending([started, interrupted, resumed]) is None
    assert ending([started, interrupted, resumed, finished]) is finished
