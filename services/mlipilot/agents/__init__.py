"""Agents propose recipe patches; all share the interface in ``agents.base``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlipilot.agents.base import Agent
from mlipilot.agents.random_search import RandomSearchAgent
from mlipilot.agents.rule_based import RuleBasedResearcher

if TYPE_CHECKING:
    from mlipilot.config import AgentConfig


def make_agent(config: AgentConfig) -> Agent:
    if config.kind == "random":
        return RandomSearchAgent(seed=config.seed)
    if config.kind == "optuna":  # imported here: optuna costs every CLI start ~0.3 s otherwise
        from mlipilot.agents.optuna_agent import OptunaAgent

        return OptunaAgent(seed=config.seed)
    return RuleBasedResearcher()
