"""Resume and seed repeats (noise-aware acceptance): finished repeats are known, others retrain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlipilot.campaign.resume import read_prior_run
from mlipilot.ledger import Ledger, LedgerEvent, read_events


def row(event: str, candidate: str, iteration: int = 1, **fields: Any) -> LedgerEvent:
    return LedgerEvent(
        campaign="c", event=event, iteration=iteration, candidate=candidate, **fields
    )


def trained(candidate: str, model: Path, iteration: int = 1) -> list[LedgerEvent]:
    """A training that wrote ``model`` and its scoring (feasible, composite 0.5)."""
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"model")
    return [
        row("training", candidate, iteration, status="ok", detail={"model": model.as_uri()}),
        row(
            "evaluation",
            candidate,
            iteration,
            status="feasible",
            metrics={"energy_mae": 1.0},
            feasible=True,
            violation=0.0,
            composite=0.5,
            detail={"scorecard": "unit"},
        ),
    ]


def test_resume_knows_finished_repeats_and_retrains_the_rest(tmp_path: Path) -> None:
    models = tmp_path / "candidates"
    events = [
        LedgerEvent(campaign="c", event="campaign_started"),
        row("proposal", "it000", 0),
        *trained("it000", models / "it000" / "m.model", 0),
        row("decision", "it000", 0, decision="BASELINE"),
        row("proposal", "it001", hypothesis="h", patch={"lr": 0.01}),
        *trained("it001", models / "it001" / "m.model"),
        row("repeat", "it001.seed2", detail={"repeat_of": "it001", "side": "candidate"}),
        row("repeat", "it000.seed2", detail={"repeat_of": "it000", "side": "incumbent"}),
        row("repeat", "it001.seed3", detail={"repeat_of": "it001", "side": "candidate"}),
        *trained("it001.seed2", models / "it001.seed2" / "m.model"),
        row("training", "it001.seed3", status="failed", reason="non-finite loss"),
        # it000.seed2 was killed mid-training: no training row.
    ]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:  # as the ledger stores and reads them
        ledger.append_all(events)
    prior = read_prior_run(tmp_path, read_events(tmp_path / "ledger.sqlite"))
    assert prior.repeated == {"it001.seed2", "it000.seed2", "it001.seed3"}
    assert prior.proposed == {"it000", "it001"}  # repeats are not proposals
    assert sorted(prior.proposals) == [0, 1] and len(prior.proposals[1]) == 1
    done = prior.known["it001.seed2"]
    assert done.result is not None and done.result.composite == 0.5
    assert done.model == models / "it001.seed2" / "m.model"
    failed = prior.known["it001.seed3"]  # its own failure: recorded, not retrained
    assert failed.result is None and failed.failure == "training failed: non-finite loss"
    assert prior.in_flight == ["it000.seed2"]
    assert prior.dispatched("it000.seed2") and prior.dispatched("it001")
    assert not prior.dispatched("it002")
    assert prior.decided == {"it000"}
