"""Naming and ranking the candidates of one iteration."""

from __future__ import annotations

from pathlib import Path

from factories import make_spec

from mlipilot.agents.base import Proposal
from mlipilot.campaign.candidates import CandidateJob, Finished, candidate_name, rank
from mlipilot.recipe import Recipe
from mlipilot.scoring.result import ScoreResult

SPEC = make_spec(
    "unit",
    [{"metric": "force_mae_meV_per_A", "max": 60.0, "unit": "meV/Å"}],
    {"force_mae_meV_per_A": 1.0},
)


def _finished(index: int, force_mae: float | None) -> Finished:
    job = CandidateJob(
        1,
        index,
        f"it001-{index + 1}",
        Recipe(),
        Proposal(hypothesis="h", patch={"lr": 0.01}),
        Path("."),
    )
    if force_mae is None:
        return Finished(job, None, None, "training failed: boom")
    result = ScoreResult.judged(
        SPEC, {"force_mae_meV_per_A": force_mae}, spec_hash="s", test_hash="t"
    )
    return Finished(job, Path("m"), result, None)


def test_names_keep_the_single_candidate_form() -> None:
    assert candidate_name(3, 0, 1) == "it003"
    assert [candidate_name(3, i, 3) for i in range(3)] == ["it003-1", "it003-2", "it003-3"]


def test_feasible_first_then_lower_composite_then_lower_violation() -> None:
    ranked = rank(
        [
            _finished(0, 90.0),
            _finished(1, 50.0),
            _finished(2, None),
            _finished(3, 30.0),
            _finished(4, 70.0),
        ]
    )
    assert [f.job.index for f in ranked] == [3, 1, 4, 0]  # the failed one is not ranked


def test_ties_go_to_the_earlier_proposal_whatever_the_input_order() -> None:
    a, b, c = _finished(0, 40.0), _finished(1, 40.0), _finished(2, 40.0)
    assert [f.job.index for f in rank([c, a, b])] == [0, 1, 2]
    assert [f.job.index for f in rank([b, c, a])] == [0, 1, 2]
