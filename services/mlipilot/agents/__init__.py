"""Agents propose recipe patches; all share the interface in ``agents.base``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlipilot.agents.base import Agent
from mlipilot.agents.random_search import RandomSearchAgent
from mlipilot.agents.rule_based import RuleBasedResearcher
from mlipilot.errors import MlipilotError

if TYPE_CHECKING:
    from mlipilot.config import AgentConfig


def make_agent(config: AgentConfig) -> Agent:
    if config.kind == "random":
        return RandomSearchAgent(seed=config.seed)
    if config.kind == "optuna":  # imported here: optuna costs every CLI start ~0.3 s otherwise
        from mlipilot.agents.optuna_agent import OptunaAgent

        return OptunaAgent(seed=config.seed)
    if config.kind == "llm":
        return _llm_agent(config)
    if config.kind == "replay":
        from mlipilot.agents.replay import ReplayAgent

        assert config.ledger is not None  # AgentConfig requires it for this kind
        return ReplayAgent(config.ledger)
    return RuleBasedResearcher()


def _llm_agent(config: AgentConfig) -> Agent:
    from mlipilot.agents.llm import LlmAgent, LlmSettings, api_key_from_env
    from mlipilot.config import LlmOptions

    if config.base_url is None:  # only a server fills it in, from the endpoint's name
        raise MlipilotError(
            f"agent.endpoint {config.endpoint!r} names a model server an orchestrator server "
            "is configured with; to run the campaign here, set agent.base_url instead",
            fields=("agent.endpoint",),
        )
    assert config.model is not None  # AgentConfig checks
    settings = LlmSettings(
        **config.model_dump(include=set(LlmOptions.model_fields)),
        base_url=config.base_url,
        model=config.model,
        api_key=api_key_from_env(config.api_key_env),
        seed=config.seed,
    )
    agent = LlmAgent(settings)
    agent.check_server()  # before the baseline trains: a wrong URL or model fails at once
    return agent
