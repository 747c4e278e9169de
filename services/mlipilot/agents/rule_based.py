"""A rule-based researcher: MLIP know-how written down as ordered rules.

Each rule looks at the incumbent's scorecard result (which constraints fail, by how much) and
the recipe, and when it applies proposes one change with the reason a MACE practitioner would
give. Rules are tried in order of how fundamental the fix is (normalization before loss
balance before schedule before capacity); a change whose resulting recipe was already tried is
skipped, so a reverted idea is not repeated on the same incumbent but may be retried on a
new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlipilot.agents.base import AgentGaveUp, CampaignState, Proposal
from mlipilot.code_mode.edits import propose_code_edit
from mlipilot.code_mode.program_files import (
    PROGRAM,
    TEMPLATE_KNOBS,
    program_digest,
    program_knobs,
    recipe_job,
)
from mlipilot.recipe import Recipe, RecipeError
from mlipilot.scoring.result import ENERGY, FORCES, MD, SHORT_RANGE, SPEED, ScoreResult


@dataclass(frozen=True)
class Rule:
    name: str
    applies: Callable[[Recipe, ScoreResult, CampaignState], bool]
    patch: Callable[[Recipe], dict[str, Any]]
    hypothesis: Callable[[Recipe, ScoreResult], str]


def _margin(result: ScoreResult, metric: str) -> float:
    return min((c.margin for c in result.constraints_on(metric)), default=0.0)


def _value(result: ScoreResult, metric: str) -> str:
    """The value with its unit: the worst constraint of the kind, or the metric itself."""
    found = sorted(result.constraints_on(metric), key=lambda c: c.margin)
    if found:
        return f"{found[0].value:.3g} {found[0].unit}"
    v = result.metrics.get(metric)
    return "n/a" if v is None else f"{v:.3g}"


def _inaccurate(result: ScoreResult) -> bool:
    return result.fails(ENERGY) or result.fails(FORCES)


def _improvable(result: ScoreResult) -> bool:
    """Accuracy is worth more effort: a constraint fails, or (feasible) the composite can drop."""
    return _inaccurate(result) or result.feasible


def _stage_two_energy_weight(r: Recipe) -> float:
    """MACE's 1000, or three times a first stage that already weights energy that high: a
    stage two at the first stage's weight would re-weight nothing."""
    return min(10000.0, max(1000.0, 3.0 * r.energy_weight))


def _stalled(state: CampaignState) -> bool:
    """The last two tries were both reverted: the easy fixes are spent."""
    tries = [h.verdict for h in state.history if h.verdict != "BASELINE"][-2:]
    return len(tries) == 2 and all(v != "ACCEPT" for v in tries)


RULES: list[Rule] = [
    Rule(
        "normalize-output",
        lambda r, res, s: res.fails(ENERGY) and (r.scaling == "no_scaling" or r.e0s == "zero"),
        lambda r: {"e0s": "average", "scaling": "rms_forces_scaling"},
        lambda r, res: (
            f"Energy MAE is {_value(res, ENERGY)} with e0s={r.e0s}, "
            f"scaling={r.scaling}: the network must learn the absolute energy scale itself. "
            "Least-squares E0s and RMS-force scaling put its outputs at order one."
        ),
    ),
    Rule(
        "reweight-forces",
        lambda r, res, s: res.fails(FORCES) and r.forces_weight < 10 * max(r.energy_weight, 1e-9),
        lambda r: {"forces_weight": 100.0, "energy_weight": 1.0},
        lambda r, res: (
            f"Force MAE is {_value(res, FORCES)} with forces:energy weights "
            f"{r.forces_weight:g}:{r.energy_weight:g}. Forces carry 3N labels per frame and drive "
            "MD; weight them 100:1 as MACE does by default."
        ),
    ),
    Rule(
        "raise-learning-rate",
        lambda r, res, s: _inaccurate(res) and r.lr < 0.005,
        lambda r: {"lr": 0.01},
        lambda r, res: (
            f"Errors stay high and lr={r.lr:g}: within a fixed epoch budget the "
            "optimizer cannot converge at this step size; 0.01 is MACE's tested default."
        ),
    ),
    Rule(
        "widen-cutoff",
        lambda r, res, s: res.fails(MD) and r.r_max < 4.5,
        lambda r: {"r_max": 5.0},
        lambda r, res: (
            f"MD failed (survival {_value(res, MD)}) with r_max={r.r_max:g} Å, which sees only "
            "the nearest neighbours: the first two shells of fcc Cu (2.55, 3.61 Å), or in a "
            "molecule little beyond atoms two bonds apart. A 5 Å cutoff includes Cu's third "
            "shell (4.42 Å) and most of a small molecule: the environment the model needs."
        ),
    ),
    Rule(
        "pair-repulsion",
        lambda r, res, s: (res.fails(MD) or res.fails(SHORT_RANGE)) and not r.pair_repulsion,
        lambda r: {"pair_repulsion": True},
        lambda r, res: (
            (
                f"MD still fails (survival {_value(res, MD)}): atoms reach distances absent "
                "from the training data. A ZBL pair repulsion keeps them from collapsing."
            )
            if res.fails(MD)
            else (
                f"A pushed pair's energy rises on only {_value(res, SHORT_RANGE)} of the steps: "
                "below the data's shortest distances the model has a hole. A ZBL pair "
                "repulsion gives it the wall the data does not show."
            )
        ),
    ),
    Rule(
        "cut-capacity",
        lambda r, res, s: res.fails(SPEED) and (r.max_L > 0 or r.num_channels > 8),
        lambda r: {"max_L": 0} if r.max_L > 0 else {"num_channels": max(8, r.num_channels // 2)},
        lambda r, res: (
            f"Throughput is {_value(res, SPEED)}x the baseline's: the model is too "
            f"expensive (max_L={r.max_L}, {r.num_channels} channels); cut capacity."
        ),
    ),
    Rule(
        "progressive-schedule",
        lambda r, res, s: (res.fails(ENERGY) or res.feasible) and not r.stage_two,
        lambda r: {
            "stage_two": True,
            "stage_two_energy_weight": _stage_two_energy_weight(r),
            "stage_two_lr": 0.001,
        },
        lambda r, res: (
            f"Energy MAE is {_value(res, ENERGY)} with forces:energy weighted "
            f"{r.forces_weight:g}:{r.energy_weight:g}. A final stage (MACE stage two) with a "
            f"higher energy weight ({_stage_two_energy_weight(r):g}) and a small lr fits "
            "energies once the force field is in place."
        ),
    ),
    Rule(
        "add-interaction",
        lambda r, res, s: _improvable(res) and r.num_interactions < 2 and _margin(res, SPEED) > 0.3,
        lambda r: {"num_interactions": 2},
        lambda r, res: (
            "Accuracy stalls with one interaction layer: a second message-passing "
            "layer makes the descriptor many-body beyond the cutoff sphere."
        ),
    ),
    Rule(
        "add-channels",
        lambda r, res, s: (
            (_improvable(res) or _stalled(s)) and r.num_channels < 64 and _margin(res, SPEED) > 0.3
        ),
        lambda r: {"num_channels": min(64, r.num_channels * 2)},
        lambda r, res: (
            f"Force MAE is {_value(res, FORCES)} at {r.num_channels} channels and "
            f"throughput has room ({_value(res, SPEED)}x the baseline): double the channels."
        ),
    ),
    Rule(
        "ema",
        lambda r, res, s: not r.ema,
        lambda r: {"ema": True, "ema_decay": 0.99},
        lambda r, res: (
            "An exponential moving average of the weights smooths the end of a "
            "short schedule and usually lowers validation error at no cost in speed."
        ),
    ),
    Rule(
        "energy-weight",
        lambda r, res, s: res.feasible and _margin(res, ENERGY) < _margin(res, FORCES),
        lambda r: {"energy_weight": min(1000.0, r.energy_weight * 10)},
        lambda r, res: "Energy is the tighter constraint: raise its weight in the loss.",
    ),
]


# In code mode the program's own edits (code_mode/edits.py) are tried where the recipe's
# progressive schedule would be: after normalization, loss balance, lr and cutoff.
CODE_EDITS_BEFORE = "progressive-schedule"


class RuleBasedResearcher:
    name = "rule-based"

    def __init__(self, rules: list[Rule] | None = None) -> None:
        self.rules = rules if rules is not None else RULES

    def propose(self, state: CampaignState) -> Proposal:
        result = state.incumbent_result
        if result is None:
            raise AgentGaveUp("the baseline has no result to reason from")
        for rule in self.rules:
            if rule.name == CODE_EDITS_BEFORE and (edit := _code_edit(state, result)):
                return edit
            if not rule.applies(state.incumbent, result, state):
                continue
            patch = {
                k: v
                for k, v in rule.patch(state.incumbent).items()
                if getattr(state.incumbent, k) != v
            }
            if not patch or state.tried(state.incumbent.patched(patch)):
                continue
            if not _program_takes(state, state.incumbent.patched(patch)):
                continue
            return Proposal(
                hypothesis=f"[{rule.name}] {rule.hypothesis(state.incumbent, result)}", patch=patch
            )
        if edit := _code_edit(state, result):
            return edit
        raise AgentGaveUp("no rule applies to the incumbent that has not been tried")


def _program_takes(state: CampaignState, recipe: Recipe) -> bool:
    """Recipe mode: always. Code mode: only recipes the program has knobs for."""
    if state.program is None:
        return True
    knobs = program_knobs(state.program.get(PROGRAM, "")) or TEMPLATE_KNOBS
    try:
        recipe_job(recipe, knobs)
    except RecipeError:
        return False
    return True


def _code_edit(state: CampaignState, result: ScoreResult) -> Proposal | None:
    """Code mode: the first edit of the program that applies and was not tried."""
    if state.program is None:
        return None
    program = state.program

    def tried(text: str) -> bool:
        return state.tried(state.incumbent, program_digest({**program, PROGRAM: text}))

    found = propose_code_edit(program, result, tried)
    if found is None:
        return None
    name, hypothesis, diff = found
    return Proposal(hypothesis=f"[{name}] {hypothesis}", diff=diff)
