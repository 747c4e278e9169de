"""Ledger rows and score results survive the trip through mlipilot.v1 messages."""

from __future__ import annotations

import math

from factories import make_spec

from mlipilot.ledger import LedgerEvent
from mlipilot.rpc.convert import (
    event_to_proto,
    from_struct,
    score_result_from_proto,
    score_result_to_proto,
    status_name,
)
from mlipilot.scoring.result import ScoreResult
from mlipilot.v1 import orchestrator_pb2

SPEC = make_spec(
    "unit",
    [
        {"metric": "force_mae_meV_per_A", "max": 60.0, "unit": "meV/Å"},
        {"metric": "md_survival_fraction", "min": 1.0, "unit": "fraction"},
    ],
    {"force_mae_meV_per_A": 1.0},
)


def _result() -> ScoreResult:
    return ScoreResult.judged(
        SPEC,
        {"force_mae_meV_per_A": 75.0, "md_survival_fraction": 0.5, "energy_rmse": math.inf},
        spec_hash="a" * 64,
        test_hash="b" * 64,
        hardware={"machine": "x86_64", "torch_threads": "2"},
        timings_s={"md": 1.5},
        details={"md_replicas": [{"seed": 0, "survived": False, "min_distance_A": None}]},
    )


def test_score_result_round_trip() -> None:
    result = _result()
    back = score_result_from_proto(score_result_to_proto(result))
    assert back.feasible is False and back.violation == result.violation
    assert back.constraints == result.constraints
    assert back.metrics["energy_rmse"] == math.inf
    assert back.model_dump(exclude={"details"}) == result.model_dump(exclude={"details"})
    replica = back.details["md_replicas"][0]
    assert replica["survived"] is False and replica["min_distance_A"] is None


def test_each_ledger_row_becomes_its_typed_event() -> None:
    rows = [
        LedgerEvent(id=1, campaign="c", event="campaign_started", agent="random", spec_hash="s"),
        LedgerEvent(
            id=2,
            campaign="c",
            event="iteration_started",
            iteration=0,
            candidate="it000",
            detail={"iterations_budget": 4},
        ),
        LedgerEvent(
            id=3,
            campaign="c",
            event="proposal",
            iteration=1,
            candidate="it001",
            hypothesis="h",
            patch={"lr": 0.01},
            recipe={"lr": 0.01, "r_max": 5.0},
        ),
        LedgerEvent(
            id=4,
            campaign="c",
            event="progress",
            iteration=1,
            candidate="it001",
            status="train",
            detail={
                "stage": "train",
                "done": 2,
                "total": 5,
                "loss": 0.5,
                "valid": {"rmse_f": 80.0},
            },
        ),
        LedgerEvent(
            id=5,
            campaign="c",
            event="progress",
            iteration=1,
            candidate="it001",
            status="md",
            detail={"stage": "md", "done": 40, "total": 80},
        ),
        LedgerEvent(
            id=6,
            campaign="c",
            event="decision",
            iteration=1,
            candidate="it001",
            decision="REVERT",
            reason="worse",
            feasible=False,
            violation=0.25,
            metrics={"force_mae_meV_per_A": 75.0},
        ),
        LedgerEvent(
            id=7, campaign="c", event="campaign_finished", status="cancelled", reason="by a user"
        ),
    ]
    events = [event_to_proto(r, "c") for r in rows]
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6, 7]
    assert [e.WhichOneof("event") for e in events] == [
        "campaign_started",
        "iteration_started",
        "proposal",
        "training_progress",
        "scorecard_progress",
        "decision",
        "campaign_finished",
    ]
    assert not events[0].HasField("iteration") and events[1].iteration == 0
    assert events[1].iteration_started.iterations_budget == 4
    assert from_struct(events[2].proposal.patch) == {"lr": 0.01}
    assert events[3].training_progress.epoch == 2 and events[3].training_progress.loss == 0.5
    assert dict(events[3].training_progress.validation) == {"rmse_f": 80.0}
    assert events[4].scorecard_progress.done == 40
    decision = events[5].decision
    assert decision.verdict == orchestrator_pb2.VERDICT_REVERT
    assert decision.HasField("feasible") and not decision.feasible
    assert not decision.HasField("composite")  # unknown stays unset, not 0
    finished = events[6].campaign_finished
    assert finished.status == orchestrator_pb2.CAMPAIGN_STATUS_CANCELLED
    assert status_name(finished.status) == "cancelled"


def test_every_ledger_event_kind_has_a_typed_event() -> None:
    """A watcher sees what each row is: no ledger kind streams as an untyped event."""
    from typing import get_args

    from mlipilot.ledger import EventKind
    from mlipilot.rpc.orchestrator_client import describe_event

    detail = {"repeat_of": "it003", "side": "candidate", "seed": 2, "stage": "md"}
    for kind in get_args(EventKind):
        row = LedgerEvent(id=1, campaign="c", event=kind, candidate="it003.seed2", detail=detail)
        event = event_to_proto(row, "c")
        assert event.WhichOneof("event") is not None, kind
    repeat = event_to_proto(
        LedgerEvent(id=9, campaign="c", event="repeat", iteration=3, detail=detail), "c"
    )
    assert (repeat.seed_repeat.repeat_of, repeat.seed_repeat.side) == ("it003", "candidate")
    assert repeat.seed_repeat.seed == 2
    assert "trained again with seed 2" in describe_event(repeat)


def test_a_validation_row_streams_its_verdict() -> None:
    from mlipilot.rpc.orchestrator_client import describe_event

    row = LedgerEvent(
        id=7,
        campaign="c",
        event="validation",
        candidate="it006",
        status="failed",
        reason="18 of 20 checks pass (cu-emt v1); failing: c44_GPa, vacancy_formation_eV",
        detail={
            "suite": "cu-emt",
            "sha256": "ab" * 32,
            "passed": 18,
            "total": 20,
            "failed": ["c44_GPa", "vacancy_formation_eV"],
            "result": "file:///runs/x/candidates/it006/validation.json",
        },
    )
    event = event_to_proto(row, "c")
    v = event.validation
    assert (v.status, v.suite, v.passed, v.total) == ("failed", "cu-emt", 18, 20)
    assert list(v.failed) == ["c44_GPa", "vacancy_formation_eV"]
    assert v.suite_sha256 == "ab" * 32 and v.result_uri.endswith("validation.json")
    assert "validation failed: 18 of 20 checks pass" in describe_event(event)
