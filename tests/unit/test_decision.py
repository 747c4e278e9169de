"""The scorecard spec, judging metrics against it, and the accept/revert rule built on both."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from factories import make_spec
from pydantic import ValidationError

from mlipilot.campaign.decision import SeedRun, decide, decide_over_seeds, repeat_seeds
from mlipilot.errors import MlipilotError
from mlipilot.scoring.result import ENERGY, FORCES, MD, SPEED, ScoreResult, judge
from mlipilot.scoring.spec import Constraint, ScorecardSpec, load_spec

REL = 1e-12  # exact arithmetic, up to float rounding

SPEC_YAML = """\
name: unit
version: 2
description: a small scorecard for unit tests
md:
  start_frames: [0, 1]
  temperatures_K: [300.0, 600.0]
  seeds: [0]
  nvt_steps: 100
  nve_steps: 50
  timestep_fs: 2.0
  friction_per_fs: 0.01
  min_distance_A: 1.5
  max_temperature_factor: 3.0
  max_energy_drift_meV_per_atom_per_ps: 5.0
throughput:
  md_steps: 20
constraints:
  - metric: energy_mae
    max: 10.0
    unit: meV/atom
    why: held-out energies
  - metric: survival
    min: 0.8
    unit: fraction
composite_weights:
  energy_mae: 1.0
  survival: 2.0
"""


def spec_data(**changes: Any) -> dict[str, Any]:
    data = yaml.safe_load(SPEC_YAML)
    data.update(changes)
    return data


SPEC = ScorecardSpec.model_validate(spec_data())


def result(metrics: dict[str, float], spec: ScorecardSpec = SPEC) -> ScoreResult:
    return ScoreResult.judged(spec, metrics, spec_hash="s", test_hash="t")


# -- spec --------------------------------------------------------------------------------------


def test_load_spec_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "unit.yaml"
    path.write_text(SPEC_YAML)
    spec, digest = load_spec(path)
    assert spec == SPEC
    assert spec.version == 2
    assert spec.md.temperatures_K == [300.0, 600.0]
    assert spec.accuracy.batch_size == 8  # default
    assert spec.throughput.repeats == 3  # default
    assert spec.constraint("survival").threshold == 0.8
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_spec_hash_changes_with_the_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(SPEC_YAML)
    b.write_text(SPEC_YAML.replace("max: 10.0", "max: 10.5"))
    assert load_spec(a)[1] != load_spec(b)[1]


def test_unknown_constraint_raises_key_error() -> None:
    with pytest.raises(KeyError):
        SPEC.constraint("force_mae")


@pytest.mark.parametrize(
    "bounds",
    [{"max": 1.0, "min": 0.5}, {}],
    ids=["both", "neither"],
)
def test_constraint_needs_exactly_one_bound(bounds: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match="exactly one of 'max' or 'min'"):
        Constraint.model_validate({"metric": "x", "unit": "u", **bounds})


@pytest.mark.parametrize("bounds", [{"max": 0.0}, {"min": -1.0}])
def test_constraint_bound_must_be_positive(bounds: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match="must be > 0"):
        Constraint.model_validate({"metric": "x", "unit": "u", **bounds})


def test_composite_weights_must_name_constrained_metrics() -> None:
    with pytest.raises(ValidationError) as info:
        ScorecardSpec.model_validate(spec_data(composite_weights={"force_mae": 1.0}))
    message = str(info.value)
    assert "['force_mae']" in message
    assert "constrained metrics are ['energy_mae', 'survival']" in message


def test_load_spec_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(MlipilotError, match=f"scorecard spec {path}: cannot read"):
        load_spec(path)


def test_load_spec_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(MlipilotError, match=f"scorecard spec {path}: not valid YAML"):
        load_spec(path)


def test_load_spec_non_mapping_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(MlipilotError, match=f"scorecard spec {path}: expected a mapping"):
        load_spec(path)


def test_load_spec_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "extra.yaml"
    path.write_text(SPEC_YAML + "thresholds: {}\n")
    with pytest.raises(MlipilotError) as info:
        load_spec(path)
    assert f"scorecard spec {path}: thresholds: unknown key" in str(info.value)


def test_load_spec_nested_error_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nested.yaml"
    path.write_text(SPEC_YAML.replace("timestep_fs: 2.0", "timestep_fs: -2.0"))
    with pytest.raises(MlipilotError, match=r"md\.timestep_fs: .*\(got -2\.0\)"):
        load_spec(path)


# -- judge -------------------------------------------------------------------------------------


def test_judge_satisfied_constraints() -> None:
    outcomes, violation, composite = judge(SPEC, {"energy_mae": 4.0, "survival": 1.0})
    energy, survival = outcomes
    assert (energy.metric, energy.op, energy.threshold, energy.unit) == (
        "energy_mae",
        "<=",
        10.0,
        "meV/atom",
    )
    assert energy.margin == pytest.approx(0.6, rel=REL)  # (10 - 4) / 10
    assert energy.violation == 0.0
    assert energy.satisfied
    assert survival.op == ">="
    assert survival.margin == pytest.approx(0.25, rel=REL)  # (1.0 - 0.8) / 0.8
    assert survival.satisfied
    assert violation == 0.0
    assert composite == pytest.approx(1.0 * 4.0 / 10.0 + 2.0 * 1.0 / 0.8, rel=REL)


def test_judge_violated_constraints() -> None:
    outcomes, violation, composite = judge(SPEC, {"energy_mae": 15.0, "survival": 0.6})
    energy, survival = outcomes
    assert energy.margin == pytest.approx(-0.5, rel=REL)
    assert energy.violation == pytest.approx(0.5, rel=REL)
    assert not energy.satisfied
    assert survival.margin == pytest.approx(-0.25, rel=REL)
    assert survival.violation == pytest.approx(0.25, rel=REL)
    assert violation == pytest.approx(0.75, rel=REL)
    assert composite == pytest.approx(15.0 / 10.0 + 2.0 * 0.6 / 0.8, rel=REL)


def test_judge_at_the_threshold_is_satisfied() -> None:
    outcomes, violation, _ = judge(SPEC, {"energy_mae": 10.0, "survival": 0.8})
    assert all(o.satisfied for o in outcomes)
    assert violation == 0.0


@pytest.mark.parametrize(
    "metrics",
    [
        {"energy_mae": math.nan, "survival": 1.0},
        {"energy_mae": math.inf, "survival": 1.0},
        {"survival": 1.0},
    ],
    ids=["nan", "inf", "missing"],
)
def test_broken_metric_is_a_large_finite_violation(metrics: dict[str, float]) -> None:
    outcomes, violation, composite = judge(SPEC, metrics)
    energy = outcomes[0]
    assert not energy.satisfied
    assert math.isfinite(energy.violation)
    assert math.isfinite(energy.margin)
    assert energy.violation >= 1e5
    assert math.isfinite(violation)
    assert violation == energy.violation
    assert math.isfinite(composite)
    # "broken" still orders below merely "bad".
    assert violation > judge(SPEC, {"energy_mae": 1000.0, "survival": 1.0})[1]


def test_nan_margin_on_the_constraint_itself() -> None:
    c = SPEC.constraint("energy_mae")
    assert c.margin(math.nan) == -math.inf
    assert c.violation(math.nan) == math.inf


def test_result_short_and_violated() -> None:
    bad = result({"energy_mae": 15.0, "survival": 0.6})
    assert [c.metric for c in bad.violated()] == ["energy_mae", "survival"]
    assert "infeasible" in bad.short()
    assert "energy_mae, survival" in bad.short()
    good = result({"energy_mae": 4.0, "survival": 1.0})
    assert good.violated() == []
    assert good.short().startswith("feasible")


# -- decide ------------------------------------------------------------------------------------

FEASIBLE = {"energy_mae": 5.0, "survival": 1.0}  # composite 0.5 + 2.5 = 3.0


def test_baseline_decision() -> None:
    d = decide(result(FEASIBLE), None)
    assert d.verdict == "BASELINE"
    assert "feasible" in d.reason
    d = decide(None, None, failure="mace crashed")
    assert d.verdict == "BASELINE"
    assert "mace crashed" in d.reason


def test_failed_candidate_is_reverted_with_its_cause() -> None:
    d = decide(None, result(FEASIBLE), failure="non-finite loss (nan) at epoch 3")
    assert d.verdict == "REVERT"
    assert "non-finite loss (nan) at epoch 3" in d.reason
    assert decide(None, result(FEASIBLE)).verdict == "REVERT"


def test_feasible_beats_infeasible() -> None:
    incumbent = result({"energy_mae": 11.0, "survival": 1.0})
    # Even with a worse composite than the incumbent's.
    candidate = result({"energy_mae": 10.0, "survival": 2.0})
    assert candidate.composite > incumbent.composite
    d = decide(candidate, incumbent)
    assert d.verdict == "ACCEPT"
    assert "incumbent was infeasible" in d.reason


def test_lower_composite_is_accepted() -> None:
    d = decide(result({"energy_mae": 4.0, "survival": 1.0}), result(FEASIBLE))
    assert d.verdict == "ACCEPT"
    assert "3.000 -> 2.900" in d.reason


@pytest.mark.parametrize("energy", [5.0, 6.0], ids=["equal", "higher"])
def test_equal_or_higher_composite_is_reverted(energy: float) -> None:
    d = decide(result({"energy_mae": energy, "survival": 1.0}), result(FEASIBLE))
    assert d.verdict == "REVERT"
    assert "not below" in d.reason


def test_min_improvement_is_honoured() -> None:
    incumbent = result(FEASIBLE)  # composite 3.0
    small_gain = result({"energy_mae": 4.0, "survival": 1.0})  # 2.9: a 3.3 % gain
    big_gain = result({"energy_mae": 2.0, "survival": 1.0})  # 2.7: a 10 % gain
    assert decide(small_gain, incumbent, min_improvement=0.0).verdict == "ACCEPT"
    refused = decide(small_gain, incumbent, min_improvement=0.05)
    assert refused.verdict == "REVERT"
    assert "by 5%" in refused.reason
    assert decide(big_gain, incumbent, min_improvement=0.05).verdict == "ACCEPT"


def test_less_infeasible_is_accepted() -> None:
    incumbent = result({"energy_mae": 20.0, "survival": 0.4})  # violation 1.0 + 0.5
    candidate = result({"energy_mae": 12.0, "survival": 0.4})  # violation 0.2 + 0.5
    d = decide(candidate, incumbent)
    assert d.verdict == "ACCEPT"
    assert "less infeasible" in d.reason
    assert "survival" in d.reason


def test_a_gain_of_round_off_is_no_gain() -> None:
    """The same violation summed in another order (seen: 0.31500000000000006 against
    0.31499999999999995) is not "less infeasible"; the same holds for the composite."""
    incumbent = result({"energy_mae": 12.0, "survival": 0.4})
    same = incumbent.model_copy(update={"violation": incumbent.violation * (1 - 3e-16)})
    assert same.violation < incumbent.violation
    assert decide(same, incumbent).verdict == "REVERT"
    feasible = result({"energy_mae": 5.0, "survival": 1.0})
    tie = feasible.model_copy(update={"composite": feasible.composite * (1 - 3e-16)})
    assert decide(tie, feasible).verdict == "REVERT"
    better = feasible.model_copy(update={"composite": feasible.composite * (1 - 1e-6)})
    assert decide(better, feasible).verdict == "ACCEPT"


def test_more_infeasible_is_reverted() -> None:
    incumbent = result({"energy_mae": 12.0, "survival": 0.4})
    candidate = result({"energy_mae": 20.0, "survival": 0.4})
    d = decide(candidate, incumbent)
    assert d.verdict == "REVERT"
    assert "energy_mae" in d.reason


def test_infeasible_never_replaces_a_feasible_incumbent() -> None:
    # Better composite, but it breaks the survival constraint.
    candidate = result({"energy_mae": 0.1, "survival": 0.79})
    incumbent = result(FEASIBLE)
    assert candidate.composite < incumbent.composite
    d = decide(candidate, incumbent)
    assert d.verdict == "REVERT"
    assert "survival" in d.reason
    assert "energy_mae" not in d.reason


def test_broken_candidate_loses_to_bad_incumbent() -> None:
    incumbent = result({"energy_mae": 50.0, "survival": 0.1})
    candidate = result({"energy_mae": math.nan, "survival": 1.0})
    assert decide(candidate, incumbent).verdict == "REVERT"
    assert decide(incumbent, candidate).verdict == "ACCEPT"


# -- decide over seeds (noise-aware acceptance) -------------------------------------------------


def runs(name: str, energies: list[float], survival: float = 1.0, seed: int = 1) -> list[SeedRun]:
    """One side: seed ``seed`` is the original ``name``, later seeds are ``name.seed<n>``.

    Composite = energy_mae / 10 + 2 x survival / 0.8, so with survival 1.0 it is e/10 + 2.5.
    """
    return [
        SeedRun(
            seed + i,
            name if i == 0 else f"{name}.seed{seed + i}",
            result({"energy_mae": e, "survival": survival}),
        )
        for i, e in enumerate(energies)
    ]


def sample_sd(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_repeat_seeds_start_at_the_recipe_seed_and_wrap_at_the_bound() -> None:
    assert repeat_seeds(1, 3) == [1, 2, 3]
    assert repeat_seeds(7, 1) == [7]
    assert repeat_seeds(2**31 - 1, 3) == [2**31 - 1, 0, 1]


def test_gain_above_the_spread_is_accepted() -> None:
    inc = runs("it000", [5.0, 5.2, 4.8])  # composites 3.00, 3.02, 2.98
    cand = runs("it003", [3.0, 3.2, 2.8])  # composites 2.80, 2.82, 2.78
    d, noise = decide_over_seeds(cand, inc, k=1.0)
    assert d.verdict == "ACCEPT", d.reason
    spread = math.hypot(sample_sd([3.0, 3.02, 2.98]), sample_sd([2.8, 2.82, 2.78]))
    assert noise["gain"] == pytest.approx(0.2, rel=1e-9)
    assert noise["spread"] == pytest.approx(spread, rel=1e-9)
    assert d.reason == f"composite 3.000 -> 2.800 over 3 seeds: gain 0.200 > spread {spread:.3f}"
    assert noise["seeds"] == [1, 2, 3] and noise["k"] == 1.0 and noise["metric"] == "composite"
    assert noise["candidate"]["candidate"] == "it003"
    assert noise["candidate"]["runs"] == ["it003", "it003.seed2", "it003.seed3"]
    assert noise["candidate"]["values"] == pytest.approx([2.8, 2.82, 2.78], rel=1e-9)
    assert noise["incumbent"]["candidate"] == "it000"
    assert noise["incumbent"]["values"] == pytest.approx([3.0, 3.02, 2.98], rel=1e-9)
    assert noise["incumbent"]["feasible"] == [True, True, True]


def test_gain_within_the_spread_is_refused() -> None:
    inc = runs("it000", [5.0, 7.0, 3.0])  # composites 3.0, 3.2, 2.8: sd 0.2
    cand = runs("it003", [4.0, 6.0, 2.0])  # composites 2.9, 3.1, 2.7: gain 0.1
    # On the first seeds alone the candidate would be accepted.
    assert decide(cand[0].result, inc[0].result).verdict == "ACCEPT"
    d, noise = decide_over_seeds(cand, inc, k=1.0)
    assert d.verdict == "REVERT"
    assert noise["gain"] == pytest.approx(0.1, rel=1e-9)
    assert noise["spread"] == pytest.approx(math.hypot(0.2, 0.2), rel=1e-9)
    assert d.reason == "composite 3.000 -> 2.900 over 3 seeds: gain 0.100 not above spread 0.283"


def test_k_scales_the_bar() -> None:
    inc = runs("it000", [5.0, 5.2, 4.8])
    cand = runs("it003", [3.0, 3.2, 2.8])  # gain 0.2, spread 0.028
    assert decide_over_seeds(cand, inc, k=5.0)[0].verdict == "ACCEPT"  # bar 0.14
    d, noise = decide_over_seeds(cand, inc, k=10.0)  # bar 0.28
    assert d.verdict == "REVERT"
    assert noise["k"] == 10.0
    assert "not above 10 x spread 0.028 = 0.283" in d.reason


def test_min_improvement_still_holds_over_seeds() -> None:
    inc = runs("it000", [5.0, 5.0])  # 3.0, 3.0
    cand = runs("it003", [4.0, 4.0])  # 2.9, 2.9: a 3.3 % gain, no spread at all
    assert decide_over_seeds(cand, inc, k=1.0)[0].verdict == "ACCEPT"
    d, _ = decide_over_seeds(cand, inc, k=1.0, min_improvement=0.05)
    assert d.verdict == "REVERT"
    assert "below 5%" in d.reason


def test_equal_results_are_refused_even_without_spread() -> None:
    inc = runs("it000", [5.0, 5.0])
    d, noise = decide_over_seeds(runs("it003", [5.0, 5.0]), inc, k=1.0)
    assert d.verdict == "REVERT"
    assert noise["gain"] == 0.0 and noise["spread"] == 0.0


def test_one_infeasible_seed_makes_the_candidate_infeasible() -> None:
    inc = runs("it000", [5.0, 5.0])
    cand = [
        *runs("it003", [1.0]),
        SeedRun(2, "it003.seed2", result({"energy_mae": 1.0, "survival": 0.7})),
    ]
    d, noise = decide_over_seeds(cand, inc, k=1.0)
    assert d.verdict == "REVERT"
    assert d.reason.startswith("infeasible on seed 2 (it003.seed2: violates survival)")
    assert noise["candidate"]["feasible"] == [True, False]
    assert noise["metric"] == "violation"


def test_first_seed_feasible_but_another_not_is_reverted_against_an_infeasible_incumbent() -> None:
    inc = runs("it000", [20.0, 20.0], survival=0.4)  # infeasible on both seeds
    cand = [
        *runs("it003", [1.0]),
        SeedRun(2, "it003.seed2", result({"energy_mae": 1.0, "survival": 0.7})),
    ]
    assert decide(cand[0].result, inc[0].result).verdict == "ACCEPT"  # feasible beats infeasible
    d, _ = decide_over_seeds(cand, inc, k=1.0)
    assert d.verdict == "REVERT"
    assert d.reason == (
        "feasible on seed 1 but infeasible on seed 2 (it003.seed2: violates survival)"
    )


def test_feasible_on_every_seed_beats_an_incumbent_infeasible_on_one() -> None:
    inc = [
        *runs("it000", [5.0]),
        SeedRun(2, "it000.seed2", result({"energy_mae": 5.0, "survival": 0.7})),
    ]
    d, noise = decide_over_seeds(runs("it003", [6.0, 6.0]), inc, k=1.0)
    assert d.verdict == "ACCEPT"
    assert d.reason == "feasible on all 2 seeds; the incumbent is infeasible on seed 2"
    assert noise["incumbent"]["feasible"] == [True, False]


def test_infeasible_vs_infeasible_compares_violation_over_seeds() -> None:
    inc = runs("it000", [20.0, 21.0], survival=0.4)  # violations 1.5, 1.6
    better = runs("it003", [12.0, 12.5], survival=0.4)  # violations 0.7, 0.75
    d, noise = decide_over_seeds(better, inc, k=1.0)
    assert d.verdict == "ACCEPT", d.reason
    assert noise["metric"] == "violation"
    assert noise["incumbent"]["values"] == pytest.approx([1.5, 1.6], rel=1e-9)
    assert noise["candidate"]["values"] == pytest.approx([0.7, 0.75], rel=1e-9)
    assert noise["gain"] == pytest.approx(0.825, rel=1e-9)
    spread = math.hypot(sample_sd([1.5, 1.6]), sample_sd([0.7, 0.75]))
    assert noise["spread"] == pytest.approx(spread, rel=1e-9)
    assert d.reason.startswith("less infeasible: violation 1.550 -> 0.725 over 2 seeds")
    # A lucky first seed, a bad second one: the mean violation does not improve.
    noisy = runs("it003", [12.0, 30.0], survival=0.4)  # violations 0.7, 2.5
    assert decide(noisy[0].result, inc[0].result).verdict == "ACCEPT"
    d, noise = decide_over_seeds(noisy, inc, k=1.0)
    assert d.verdict == "REVERT"
    assert "not above spread" in d.reason


def test_a_failed_candidate_repeat_reverts_and_a_failed_incumbent_repeat_is_left_out() -> None:
    inc = runs("it000", [5.0, 5.0])
    cand = [
        *runs("it003", [1.0]),
        SeedRun(2, "it003.seed2", None, "training failed: non-finite loss (nan) at epoch 2"),
    ]
    d, noise = decide_over_seeds(cand, inc, k=1.0)
    assert d.verdict == "REVERT"
    assert d.reason == (
        "candidate's seed 2 (it003.seed2) failed: training failed: non-finite loss (nan) at epoch 2"
    )
    assert noise["gain"] is None and noise["spread"] is None
    assert noise["candidate"]["values"][1] is None
    # The incumbent's failed repeat is reused while it stays incumbent: were it to revert every
    # candidate, the campaign would stall. It is left out of the incumbent's side instead.
    inc_failed = [*runs("it000", [5.0]), SeedRun(2, "it000.seed2", None, "training timeout")]
    d, noise = decide_over_seeds(runs("it003", [1.0, 1.0]), inc_failed, k=1.0)
    assert d.verdict == "ACCEPT", d.reason
    assert "(incumbent's seed 2 failed, left out)" in d.reason
    assert noise["incumbent"]["values"][1] is None and noise["spread"] == 0.0
    d, _ = decide_over_seeds(runs("it003", [4.0, 6.0]), inc_failed, k=1.0)
    assert d.verdict == "REVERT"  # mean 5.0 against 5.0: no gain


def test_constraints_on_a_kind_take_every_unit_and_a_name_only_itself() -> None:
    spec = make_spec(
        "kinds",
        [
            {"metric": "energy_mae_meV_per_atom", "max": 35.0, "unit": "meV/atom"},
            {"metric": "energy_mae_kcal_per_mol", "max": 15.0, "unit": "kcal/mol"},
            {"metric": "force_mae_meV_per_A", "max": 60.0, "unit": "meV/Å"},
            {"metric": "md_survival_fraction", "min": 1.0, "unit": "fraction"},
        ],
        {"energy_mae_meV_per_atom": 1.0},
    )
    metrics = {
        "energy_mae_meV_per_atom": 20.0,
        "energy_mae_kcal_per_mol": 16.0,  # fails in kcal/mol only
        "force_mae_meV_per_A": 50.0,
        "md_survival_fraction": 1.0,
    }
    result = ScoreResult.judged(spec, metrics, spec_hash="h", test_hash="t")
    assert [c.metric for c in result.constraints_on(ENERGY)] == [
        "energy_mae_meV_per_atom",
        "energy_mae_kcal_per_mol",
    ]
    assert [c.metric for c in result.constraints_on("energy_mae_meV_per_atom")] == [
        "energy_mae_meV_per_atom"
    ]
    assert result.fails(ENERGY) and not result.fails("energy_mae_meV_per_atom")
    assert not result.fails(FORCES) and not result.fails(MD)
    assert result.constraints_on(SPEED) == [] and not result.fails(SPEED)
