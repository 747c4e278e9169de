"""The rule-based researcher and the random-search baseline, on hand-built campaign states."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from factories import make_spec

from mlipilot.agents import make_agent
from mlipilot.agents.base import AgentGaveUp, CampaignState, HistoryEntry, Proposal
from mlipilot.agents.random_search import RandomSearchAgent, sample_value
from mlipilot.agents.rule_based import RULES, RuleBasedResearcher
from mlipilot.config import AgentConfig
from mlipilot.recipe import Recipe, bounds, choices
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.spec import Constraint

ENERGY = "energy_mae_meV_per_atom"
FORCES = "force_mae_meV_per_A"
MD = "md_survival_fraction"
SPEED = "relative_throughput"

SPEC = make_spec(
    "agents-unit",
    [
        {"metric": ENERGY, "max": 5.0, "unit": "meV/atom"},
        {"metric": FORCES, "max": 100.0, "unit": "meV/Å"},
        {"metric": MD, "min": 1.0, "unit": "fraction"},
        {"metric": SPEED, "min": 0.5, "unit": "x baseline"},
    ],
    {ENERGY: 1.0, FORCES: 1.0},
)

# All four constraints met, energy with more room than forces (0.6 vs 0.2 relative margin).
GOOD = {ENERGY: 2.0, FORCES: 80.0, MD: 1.0, SPEED: 1.0}
BAD = {ENERGY: 50.0, FORCES: 400.0, MD: 0.25, SPEED: 0.2}


def scored(metrics: dict[str, float]) -> ScoreResult:
    return ScoreResult.judged(SPEC, metrics, spec_hash="s", test_hash="t")


def metrics_failing(*failing: str) -> dict[str, float]:
    return {k: (BAD[k] if k in failing else GOOD[k]) for k in GOOD}


def state(
    incumbent: Recipe | None = None,
    metrics: dict[str, float] | None = None,
    tried: list[Recipe] | None = None,
    iteration: int = 1,
    verdicts: list[str] | None = None,
) -> CampaignState:
    incumbent = incumbent or Recipe()
    result = scored(metrics if metrics is not None else GOOD)
    history = [
        HistoryEntry(
            iteration=0,
            hypothesis="baseline",
            patch={},
            recipe=incumbent,
            verdict="BASELINE",
            reason="baseline",
            result=result,
        )
    ]
    for i, recipe in enumerate(tried or []):
        verdict = verdicts[i] if verdicts else "REVERT"
        history.append(
            HistoryEntry(
                iteration=i + 1,
                hypothesis="earlier try",
                patch=incumbent.diff(recipe),
                recipe=recipe,
                verdict=verdict,
                reason="-",
                result=None,
            )
        )
    return CampaignState(
        iteration=iteration,
        iterations_total=10,
        spec=SPEC,
        baseline=Recipe(),
        incumbent=incumbent,
        incumbent_result=result,
        history=history,
    )


def assert_valid(proposal: Proposal, st: CampaignState) -> Recipe:
    recipe = st.incumbent.patched(proposal.patch)
    assert recipe != st.incumbent
    assert not st.tried(recipe)
    assert all(getattr(st.incumbent, k) != v for k, v in proposal.patch.items())
    return recipe


# -- rule-based researcher ---------------------------------------------------------------------


def rule_of(proposal: Proposal) -> str:
    assert proposal.hypothesis.startswith("[")
    return proposal.hypothesis[1 : proposal.hypothesis.index("]")]


def test_no_scaling_with_bad_energy_normalizes_output() -> None:
    st = state(Recipe().patched({"scaling": "no_scaling"}), metrics_failing(ENERGY))
    proposal = RuleBasedResearcher().propose(st)
    assert rule_of(proposal) == "normalize-output"
    # e0s is already "average": only the changed key is proposed.
    assert proposal.patch == {"scaling": "rms_forces_scaling"}
    assert "no_scaling" in proposal.hypothesis
    assert_valid(proposal, st)


def test_zero_e0s_with_bad_energy_normalizes_output() -> None:
    st = state(Recipe().patched({"e0s": "zero"}), metrics_failing(ENERGY, FORCES))
    proposal = RuleBasedResearcher().propose(st)
    assert rule_of(proposal) == "normalize-output"
    assert proposal.patch == {"e0s": "average"}


def test_bad_forces_with_low_force_weight_reweights() -> None:
    st = state(Recipe().patched({"forces_weight": 1.0}), metrics_failing(FORCES))
    proposal = RuleBasedResearcher().propose(st)
    assert rule_of(proposal) == "reweight-forces"
    assert proposal.patch == {"forces_weight": 100.0}
    assert_valid(proposal, st)


def test_bad_energy_with_sound_normalization_skips_normalize_output() -> None:
    st = state(Recipe().patched({"forces_weight": 1.0}), metrics_failing(ENERGY, FORCES))
    assert rule_of(RuleBasedResearcher().propose(st)) == "reweight-forces"


def test_md_failure_with_short_cutoff_widens_it() -> None:
    st = state(Recipe().patched({"r_max": 3.0}), metrics_failing(MD))
    proposal = RuleBasedResearcher().propose(st)
    assert rule_of(proposal) == "widen-cutoff"
    assert proposal.patch == {"r_max": 5.0}
    assert_valid(proposal, st)


def test_accuracy_rules_come_before_the_cutoff() -> None:
    recipe = Recipe().patched({"r_max": 3.0, "lr": 0.001})
    proposal = RuleBasedResearcher().propose(state(recipe, metrics_failing(MD, FORCES)))
    assert rule_of(proposal) == "raise-learning-rate"
    assert proposal.patch == {"lr": 0.01}


def test_md_failure_with_wide_cutoff_adds_pair_repulsion() -> None:
    proposal = RuleBasedResearcher().propose(state(Recipe(), metrics_failing(MD)))
    assert rule_of(proposal) == "pair-repulsion"
    assert proposal.patch == {"pair_repulsion": True}


def test_a_hole_in_the_short_range_probe_adds_pair_repulsion() -> None:
    # Scorecard v2: MD survives, but a pushed pair's energy falls somewhere (short_range.py).
    short = "short_range_rise_fraction"
    spec = SPEC.model_copy(
        update={
            "short_range": {"from_A": 2.3, "to_A": 1.2},
            "constraints": [*SPEC.constraints, Constraint(metric=short, min=1.0, unit="fraction")],
        }
    )
    result = ScoreResult.judged(spec, {**GOOD, short: 0.82}, spec_hash="s", test_hash="t")
    st = state(Recipe()).model_copy(update={"incumbent_result": result})
    proposal = RuleBasedResearcher().propose(st)
    assert rule_of(proposal) == "pair-repulsion"
    assert proposal.patch == {"pair_repulsion": True}
    assert "0.82" in proposal.hypothesis and "hole" in proposal.hypothesis
    with_zbl = state(Recipe(pair_repulsion=True)).model_copy(update={"incumbent_result": result})
    assert rule_of(RuleBasedResearcher().propose(with_zbl)) != "pair-repulsion"


def test_slow_model_with_max_l_cuts_capacity() -> None:
    st = state(Recipe().patched({"max_L": 1}), metrics_failing(SPEED))
    proposal = RuleBasedResearcher().propose(st)
    assert rule_of(proposal) == "cut-capacity"
    assert proposal.patch == {"max_L": 0}
    assert_valid(proposal, st)


def test_slow_model_at_max_l_zero_halves_channels() -> None:
    st = state(Recipe().patched({"num_channels": 64}), metrics_failing(SPEED))
    proposal = RuleBasedResearcher().propose(st)
    assert rule_of(proposal) == "cut-capacity"
    assert proposal.patch == {"num_channels": 32}


def test_tried_recipe_is_skipped_for_the_next_rule() -> None:
    incumbent = Recipe().patched({"scaling": "no_scaling"})
    first = RuleBasedResearcher().propose(state(incumbent, metrics_failing(ENERGY)))
    assert rule_of(first) == "normalize-output"
    tried = incumbent.patched(first.patch)
    st = state(incumbent, metrics_failing(ENERGY), tried=[tried])
    second = RuleBasedResearcher().propose(st)
    assert rule_of(second) != "normalize-output"
    assert rule_of(second) == "progressive-schedule"
    assert_valid(second, st)


@pytest.mark.parametrize(("energy_weight", "stage_two"), [(1.0, 1000.0), (1000.0, 3000.0)])
def test_stage_two_weights_energy_above_the_first_stage(
    energy_weight: float, stage_two: float
) -> None:
    # MACE's 1000 after a 100:1 first stage; three times a first stage that already weights
    # energy at 1000 (the validated Cu preset), else stage two would re-weight nothing.
    incumbent = Recipe().patched({"energy_weight": energy_weight, "pair_repulsion": True})
    proposal = RuleBasedResearcher().propose(state(incumbent, GOOD))
    assert rule_of(proposal) == "progressive-schedule"
    assert incumbent.patched(proposal.patch).stage_two_energy_weight == stage_two
    assert f"100:{energy_weight:g}" in proposal.hypothesis


def test_nothing_applies_gives_up() -> None:
    # Feasible, energy has more room than forces, and every improvement is already in the
    # recipe: EMA, stage two, two interactions, the channel cap.
    incumbent = Recipe().patched({"ema": True, "stage_two": True, "num_channels": 64})
    st = state(incumbent, GOOD)
    with pytest.raises(AgentGaveUp):
        RuleBasedResearcher().propose(st)


def test_every_applicable_rule_tried_gives_up() -> None:
    incumbent = Recipe().patched({"r_max": 3.0})
    agent = RuleBasedResearcher()
    tried: list[Recipe] = []
    names = []
    for _ in range(len(RULES) + 1):
        st = state(incumbent, metrics_failing(MD), tried=tried)
        try:
            proposal = agent.propose(st)
        except AgentGaveUp:
            break
        assert_valid(proposal, st)
        names.append(rule_of(proposal))
        tried.append(incumbent.patched(proposal.patch))
    else:
        pytest.fail(f"never gave up: {names}")
    assert names[:2] == ["widen-cutoff", "pair-repulsion"]
    assert len(names) == len(set(names))


def test_no_incumbent_result_gives_up() -> None:
    st = state().model_copy(update={"incumbent_result": None})
    with pytest.raises(AgentGaveUp):
        RuleBasedResearcher().propose(st)


_RECIPES = [
    Recipe(),
    Recipe().patched({"scaling": "no_scaling", "forces_weight": 1.0, "r_max": 3.0}),
    Recipe().patched({"e0s": "zero", "lr": 0.001, "max_L": 2, "num_interactions": 1}),
    Recipe().patched({"ema": True, "stage_two": True, "pair_repulsion": True, "num_channels": 64}),
    Recipe().patched({"ema": True, "energy_weight": 500.0, "num_channels": 4}),
]
_FAILURES = [f for n in range(5) for f in itertools.combinations((ENERGY, FORCES, MD, SPEED), n)]


@pytest.mark.parametrize("recipe", _RECIPES, ids=range(len(_RECIPES)))
def test_every_rule_proposal_is_valid_and_named(recipe: Recipe) -> None:
    names = {rule.name for rule in RULES}
    for failing in _FAILURES:
        for verdicts in (None, ["REVERT", "REVERT"]):
            tried = [recipe.patched({"seed": 2}), recipe.patched({"seed": 3})] if verdicts else []
            st = state(recipe, metrics_failing(*failing), tried=tried, verdicts=verdicts)
            try:
                proposal = RuleBasedResearcher().propose(st)
            except AgentGaveUp:
                continue
            assert rule_of(proposal) in names
            assert_valid(proposal, st)
            assert "seed" not in proposal.patch


def test_make_agent() -> None:
    assert isinstance(make_agent(AgentConfig(kind="rule-based")), RuleBasedResearcher)
    agent = make_agent(AgentConfig(kind="random", seed=5))
    assert isinstance(agent, RandomSearchAgent)
    assert agent.seed == 5


# -- random search -----------------------------------------------------------------------------


def test_random_is_deterministic_for_seed_and_iteration() -> None:
    st = state(iteration=4)
    assert RandomSearchAgent(seed=3).propose(st) == RandomSearchAgent(seed=3).propose(st)


def test_random_differs_across_iterations_and_seeds() -> None:
    agent = RandomSearchAgent(seed=3)
    patches = [agent.propose(state(iteration=i)).patch for i in range(8)]
    assert len({repr(sorted(p.items())) for p in patches}) > 1
    other = [RandomSearchAgent(seed=4).propose(state(iteration=i)).patch for i in range(8)]
    assert other != patches


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_random_patches_validate_and_never_touch_the_seed(seed: int) -> None:
    agent = RandomSearchAgent(seed=seed)
    incumbent = Recipe().patched({"r_max": 4.0, "ema": True})
    for iteration in range(60):
        st = state(incumbent, iteration=iteration)
        proposal = agent.propose(st)
        assert "seed" not in proposal.patch
        assert 1 <= len(proposal.patch) <= agent.max_keys
        assert proposal.hypothesis.startswith("random search: ")
        recipe = assert_valid(proposal, st)
        assert recipe.seed == incumbent.seed


def test_random_never_repeats_a_tried_recipe() -> None:
    agent = RandomSearchAgent(seed=0)
    incumbent = Recipe()
    tried: list[Recipe] = []
    for _ in range(5):
        st = state(incumbent, tried=tried, iteration=2)
        proposal = agent.propose(st)
        recipe = assert_valid(proposal, st)
        assert recipe not in tried
        tried.append(recipe)
    assert len(set(r.digest() for r in tried)) == 5


def test_random_gives_up_when_draws_run_out() -> None:
    agent = RandomSearchAgent(seed=0, max_draws=1)
    first = agent.propose(state(iteration=2))
    with pytest.raises(AgentGaveUp):
        agent.propose(state(tried=[Recipe().patched(first.patch)], iteration=2))


def _draws(key: str, n: int) -> list[Any]:
    rng = random.Random(f"draws:{key}")
    return [sample_value(key, rng) for _ in range(n)]


@pytest.mark.parametrize("key", [k for k in Recipe.model_fields if k != "ema_decay"])
def test_sample_value_stays_in_the_schema(key: str) -> None:
    options = choices(key)
    for value in _draws(key, 300):
        if options is not None:
            assert value in options
        else:
            low, high, exclusive = bounds(key)
            assert (low < value if exclusive else low <= value) and value <= high, (key, value)
        Recipe().patched({key: value})


def test_sample_value_ema_decay_stays_in_the_schema() -> None:
    low, high, _ = bounds("ema_decay")
    values = _draws("ema_decay", 2000)
    assert all(low <= v <= high for v in values), max(values)


@pytest.mark.parametrize(
    ("seed", "iteration", "incumbent"),
    [(0, 652, Recipe()), (1, 23, Recipe().patched({"r_max": 4.0, "ema": True}))],
    ids=["seed0-it652", "seed1-it23"],
)
def test_random_propose_never_raises_recipe_error(
    seed: int, iteration: int, incumbent: Recipe
) -> None:
    st = state(incumbent, iteration=iteration)
    proposal = RandomSearchAgent(seed=seed).propose(st)
    assert_valid(proposal, st)


# Accurate but MD still fails with the cutoff and repulsion fixes in place: only a stall makes
# add-channels fire before ema.
STALL_CANDIDATE = Recipe().patched({"pair_repulsion": True, "stage_two": True})


def test_two_reverted_tries_count_as_stalled() -> None:
    incumbent = STALL_CANDIDATE
    tries = [incumbent.patched({"seed": 2}), incumbent.patched({"seed": 3})]
    st = state(incumbent, metrics_failing(MD), tried=tries, verdicts=["REVERT", "FAILED"])
    proposal = RuleBasedResearcher().propose(st)
    assert rule_of(proposal) == "add-channels"
    assert proposal.patch == {"num_channels": 32}


def test_one_reverted_try_after_the_baseline_is_not_stalled() -> None:
    incumbent = STALL_CANDIDATE
    st = state(
        incumbent, metrics_failing(MD), tried=[incumbent.patched({"seed": 2})], verdicts=["REVERT"]
    )
    proposal = RuleBasedResearcher().propose(st)
    assert rule_of(proposal) == "ema"


def test_a_feasible_incumbent_is_still_improved() -> None:
    # Feasible: the composite can still drop, so the researcher keeps going (stage two first).
    st = state(Recipe(), GOOD)
    proposal = RuleBasedResearcher().propose(st)
    assert rule_of(proposal) == "progressive-schedule"
    assert proposal.patch["stage_two"] is True


MOLECULAR_SPEC = make_spec(
    "agents-unit-molecules",
    [
        {"metric": "energy_mae_kcal_per_mol", "max": 15.0, "unit": "kcal/mol"},
        {"metric": "force_mae_kcal_per_mol_per_A", "max": 8.0, "unit": "kcal/mol/Å"},
        {"metric": MD, "min": 1.0, "unit": "fraction"},
        {"metric": SPEED, "min": 0.25, "unit": "x baseline"},
    ],
    {"energy_mae_kcal_per_mol": 1.0, "force_mae_kcal_per_mol_per_A": 1.0},
)


@pytest.mark.parametrize(
    ("energy", "forces", "rule", "quoted"),
    [
        (3288.0, 5.0, "normalize-output", "Energy MAE is 3.29e+03 kcal/mol"),
        (10.0, 125.0, "reweight-forces", "Force MAE is 125 kcal/mol/Å"),
    ],
)
def test_rules_read_the_scorecards_own_accuracy_units(
    energy: float, forces: float, rule: str, quoted: str
) -> None:
    """A molecular scorecard states accuracy in kcal/mol: the same rules fire, in its units."""
    metrics = {
        "energy_mae_kcal_per_mol": energy,
        "force_mae_kcal_per_mol_per_A": forces,
        MD: 1.0,
        SPEED: 1.0,
    }
    st = state(Recipe().patched({"e0s": "zero", "forces_weight": 1.0}), GOOD).model_copy(
        update={
            "spec": MOLECULAR_SPEC,
            "incumbent_result": ScoreResult.judged(
                MOLECULAR_SPEC, metrics, spec_hash="s", test_hash="t"
            ),
        }
    )
    proposal = RuleBasedResearcher().propose(st)
    assert rule_of(proposal) == rule
    assert quoted in proposal.hypothesis
    assert "meV" not in proposal.hypothesis
