"""Optuna's TPE over the recipe space: the classical baseline a user would pick over an LLM.

The study runs through Optuna's ask/tell interface. Each proposal is one asked trial over every
recipe key but the seed (the incumbent's seed is kept); before asking, the agent tells the study
what the campaign history says about the trials it asked earlier. History entries the agent did
not propose itself (the baseline, above all) are added as completed trials, so TPE starts from
what is known. Lower is better: a feasible candidate scores its composite, an infeasible one
``1e3 + violation``, a failed one ``1e6``. Seeded: the same states give the same proposals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from mlipilot.agents.base import AgentGaveUp, CampaignState, HistoryEntry, Proposal
from mlipilot.agents.random_search import LOG_KEYS
from mlipilot.recipe import Recipe, RecipeError, bounds, choices
from mlipilot.scoring.result import ScoreResult

INFEASIBLE_OFFSET = 1e3
FAILED_VALUE = 1e6


def objective(result: ScoreResult | None) -> float:
    """The value the study minimizes for one tried candidate."""
    if result is None:
        return FAILED_VALUE
    if result.feasible:
        return result.composite
    return INFEASIBLE_OFFSET + result.violation


def distributions() -> dict[str, BaseDistribution]:
    """One Optuna distribution per recipe key, the seed excepted."""
    out: dict[str, BaseDistribution] = {}
    for key, field in Recipe.model_fields.items():
        if key == "seed":
            continue
        options = choices(key)
        if options is not None:
            out[key] = CategoricalDistribution(options)
            continue
        low, high, exclusive = bounds(key)
        if field.annotation is int:
            out[key] = IntDistribution(math.ceil(low), math.floor(high))
            continue
        if exclusive:  # an open lower bound: start just above it
            low = math.nextafter(low, high)
        log = key in LOG_KEYS
        if log:  # as random search does: four decades below the upper bound at most
            low = max(low, high * 1e-4)
        out[key] = FloatDistribution(low, high, log=log)
    return out


def _params(recipe: Recipe, dists: dict[str, BaseDistribution]) -> dict[str, Any]:
    """A recipe as trial params; numbers outside a distribution (e.g. a zero weight on a log
    scale) are clamped into it."""
    params: dict[str, Any] = {}
    for key, dist in dists.items():
        value = getattr(recipe, key)
        if isinstance(dist, (FloatDistribution, IntDistribution)):
            value = min(dist.high, max(dist.low, value))
        params[key] = value
    return params


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class OptunaAgent:
    name = "optuna"

    def __init__(self, seed: int = 0, n_startup_trials: int = 4, max_asks: int = 50) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.seed = seed
        self.max_asks = max_asks
        self.distributions = distributions()
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        # (iteration, recipe digest) -> (trial number, recipe): asked, outcome not yet known
        self._pending: dict[tuple[int, str], tuple[int, Recipe]] = {}
        self._seen: set[tuple[int, str]] = set()  # history entries already known to the study

    def propose(self, state: CampaignState) -> Proposal:
        self._learn(state.history, before=state.iteration, in_flight=state.pending)
        for _ in range(self.max_asks):
            trial = self.study.ask(self.distributions)
            try:
                recipe = state.incumbent.patched(trial.params)
            except RecipeError:  # an inconsistent pair (stage two with forces_only): fail it
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            if state.untrainable(recipe):  # no batch left to train on, no stress to fit
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            if recipe in state.pending:  # a sibling candidate trains it already
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            known = [h.result for h in state.history if h.recipe == recipe]
            if known or recipe == state.incumbent:
                result = known[-1] if known else state.incumbent_result
                self.study.tell(trial, objective(result))
                continue
            self._pending[(state.iteration, recipe.digest())] = (trial.number, recipe)
            patch = state.incumbent.diff(recipe)
            changes = ", ".join(f"{k}={_short(v)}" for k, v in patch.items())
            return Proposal(hypothesis=f"optuna TPE trial {trial.number}: {changes}", patch=patch)
        raise AgentGaveUp(f"no untried recipe in {self.max_asks} TPE asks")

    def _learn(
        self, history: list[HistoryEntry], before: int, in_flight: Sequence[Recipe] = ()
    ) -> None:
        """Tell the study every outcome in ``history`` it does not know yet.

        Trials asked in iterations before ``before`` are settled: with their result when the
        history has it, as failed otherwise (refused or replaced: TPE ignores them). Trials of
        the current iteration wait, since several candidates are asked for before any trains,
        and so do those still in flight (an asynchronous campaign asks while others train).
        """
        outcomes = {(h.iteration, h.recipe.digest()): h for h in history}
        for key, (number, recipe) in sorted(self._pending.items()):
            if key[0] >= before or recipe in in_flight:
                continue
            entry = outcomes.get(key)
            if entry is not None:
                self.study.tell(number, objective(entry.result))
                self._seen.add(key)
            else:
                self.study.tell(number, state=TrialState.FAIL)
            del self._pending[key]
        for entry in history:
            key = (entry.iteration, entry.recipe.digest())
            if key in self._seen:
                continue
            self._seen.add(key)
            trial = optuna.trial.create_trial(
                params=_params(entry.recipe, self.distributions),
                distributions=self.distributions,
                value=objective(entry.result),
            )
            self.study.add_trial(trial)
