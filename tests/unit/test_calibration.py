"""Proposing scorecard thresholds from a baseline's and an expert's measurements."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mlipilot.errors import MlipilotError
from mlipilot.scoring.calibration import propose, round_up
from mlipilot.scoring.spec import ScorecardSpec, load_spec

CU = Path(__file__).resolve().parents[2] / "scorecard" / "cu-emt.yaml"
BASELINE = {
    "energy_mae_meV_per_atom": 120.0,
    "force_mae_meV_per_A": 300.0,
    "md_survival_fraction": 0.4,
    "relative_throughput": 1.0,
}
EXPERT = {
    "energy_mae_meV_per_atom": 12.3,
    "force_mae_meV_per_A": 41.0,
    "md_survival_fraction": 1.0,
    "relative_throughput": 0.8,
}


@pytest.fixture
def spec() -> ScorecardSpec:
    return load_spec(CU)[0]


@pytest.mark.parametrize(
    ("value", "rounded"), [(12.31, 13.0), (0.0434, 0.044), (41.0, 41.0), (99.01, 100.0)]
)
def test_round_up_to_two_significant_digits(value: float, rounded: float) -> None:
    assert round_up(value) == pytest.approx(rounded)


def test_accuracy_bounds_follow_the_expert_and_floors_stay(spec: ScorecardSpec) -> None:
    calibration = propose(spec, BASELINE, EXPERT, margin=0.25, name="cu-emt-cluster")
    new = calibration.spec
    assert (new.name, new.version) == ("cu-emt-cluster", 1)  # a new scorecard's first
    assert calibration.derived_from == f"{spec.name} v{spec.version}"
    same = propose(spec, BASELINE, EXPERT, margin=0.25).spec
    assert (same.name, same.version) == (spec.name, spec.version + 1)  # the next version
    bounds = {c.metric: c.threshold for c in new.constraints}
    assert bounds["energy_mae_meV_per_atom"] == pytest.approx(round_up(12.3 * 1.25))
    assert bounds["force_mae_meV_per_A"] == pytest.approx(round_up(41.0 * 1.25))
    old = {c.metric: c.threshold for c in spec.constraints}
    assert bounds["md_survival_fraction"] == old["md_survival_fraction"]
    assert bounds["relative_throughput"] == old["relative_throughput"]
    assert set(calibration.baseline_violates) == set(BASELINE) - {"relative_throughput"}
    assert calibration.expert_violates == []
    assert new.md == spec.md and new.composite_weights == spec.composite_weights


def test_a_baseline_as_good_as_the_expert_cannot_be_told_apart(spec: ScorecardSpec) -> None:
    close = {**EXPERT, "energy_mae_meV_per_atom": 13.0}
    with pytest.raises(MlipilotError, match="too close to tell apart"):
        propose(spec, close, EXPERT, margin=0.25)


def test_an_expert_that_fails_a_floor_is_not_calibrated_around(spec: ScorecardSpec) -> None:
    unstable = {**EXPERT, "md_survival_fraction": 0.9}
    with pytest.raises(MlipilotError, match="md_survival_fraction"):
        propose(spec, BASELINE, unstable, margin=0.25)


@pytest.mark.parametrize(
    ("expert", "margin", "words"),
    [
        ({**EXPERT, "force_mae_meV_per_A": math.nan}, 0.25, "no bound fits"),
        ({k: v for k, v in EXPERT.items() if k != "force_mae_meV_per_A"}, 0.25, "no measurement"),
        (EXPERT, -0.1, "--margin"),
    ],
)
def test_bad_measurements_or_margins_are_named(spec, expert, margin: float, words: str) -> None:
    with pytest.raises(MlipilotError, match=words):
        propose(spec, BASELINE, expert, margin=margin)
