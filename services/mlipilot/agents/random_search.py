"""Random search over the recipe space: the baseline every smarter agent must beat.

Each proposal changes one to three keys of the incumbent, drawn uniformly (log-uniformly for
scale-like keys) from the schema's own bounds, so it explores exactly the space the other
agents see. Seeded: the same campaign proposes the same patches.
"""

from __future__ import annotations

import math
import random
from typing import Any

from mlipilot.agents.base import AgentGaveUp, CampaignState, Proposal
from mlipilot.recipe import Recipe, RecipeError, bounds, choices

# Keys whose natural scale is logarithmic.
LOG_KEYS = {
    "lr",
    "stage_two_lr",
    "huber_delta",
    "energy_weight",
    "forces_weight",
    "stress_weight",
    "stage_two_energy_weight",
    "stage_two_forces_weight",
    "stage_two_stress_weight",
}
# The seed is not a hypothesis.
_SEARCHED = [k for k in Recipe.model_fields if k != "seed"]


def sample_value(key: str, rng: random.Random) -> Any:
    options = choices(key)
    if options is not None:
        return rng.choice(options)
    low, high, _ = bounds(key)
    if Recipe.model_fields[key].annotation is int:
        return rng.randint(int(low), int(high))
    if key in LOG_KEYS:
        low = max(low, high * 1e-4)
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    # Round for readable hypotheses, then clamp: rounding may step past a bound (0.99995 -> 1.0).
    return min(high, max(low, float(f"{value:.3g}")))


class RandomSearchAgent:
    name = "random"

    def __init__(self, seed: int = 0, max_keys: int = 3, max_draws: int = 200) -> None:
        self.seed = seed
        self.max_keys = max_keys
        self.max_draws = max_draws

    def propose(self, state: CampaignState) -> Proposal:
        rng = random.Random(f"{self.seed}:{state.iteration}")
        for _ in range(self.max_draws):
            keys = rng.sample(_SEARCHED, rng.randint(1, self.max_keys))
            patch = {k: sample_value(k, rng) for k in keys}
            patch = {k: v for k, v in patch.items() if getattr(state.incumbent, k) != v}
            if not patch:
                continue
            try:
                recipe = state.incumbent.patched(patch)
            except RecipeError:  # e.g. an open lower bound hit exactly: draw again
                continue
            if not state.tried(recipe):
                return Proposal(
                    hypothesis="random search: " + ", ".join(f"{k}={v}" for k, v in patch.items()),
                    patch=patch,
                )
        raise AgentGaveUp(f"no untried recipe found in {self.max_draws} draws")
