"""Every agent kind keeps the ``Agent`` contract, built the way a campaign builds it.

Each kind a campaign file may name (``agent.kind``) is made by ``make_agent`` from an
``AgentConfig`` and asked for a proposal on the same infeasible-baseline state. The contract:
a name for the ledger; a proposal whose hypothesis says something and whose patch makes a valid
recipe that differs from the incumbent and was not tried; the state left as it was; and a cost
exactly when a model was asked. The LLM kind talks to a real HTTP server on loopback that
plays a scripted model (a real model is ``make test-llm``); replay reads a real SQLite ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from llm_server import calls, serve, tool_call
from test_agents import BAD, state

from mlipilot.agents import make_agent
from mlipilot.agents.base import Agent, CampaignState
from mlipilot.config import AgentConfig
from mlipilot.ledger import Ledger, LedgerEvent
from mlipilot.recipe import Recipe

KINDS = ("rule-based", "random", "optuna", "llm", "replay")
MODEL = "conformance-model"
# A change every kind may propose: the scripted model and the recording both send it.
PATCH = {"energy_weight": Recipe().energy_weight + 9.0}


def test_every_agent_kind_a_campaign_can_name_is_checked_here() -> None:
    assert set(get_args(AgentConfig.model_fields["kind"].annotation)) == set(KINDS)


@pytest.fixture
def agent_of(tmp_path: Path) -> Iterator:
    """``agent_of(kind)``: the agent ``make_agent`` builds for that kind, its server or
    recording ready."""
    with serve(
        [MODEL], [calls(tool_call("propose", {"hypothesis": "weigh energy", "patch": PATCH}))]
    ) as server:

        def make(kind: str) -> Agent:
            config: dict = {"kind": kind, "seed": 3}
            if kind == "llm":
                config |= {"base_url": server.url, "model": MODEL, "max_retries": 0}
            if kind == "replay":
                config["ledger"] = _recording(tmp_path)
            return make_agent(AgentConfig(**config))

        yield make


def _recording(tmp_path: Path) -> Path:
    run = tmp_path / "recorded-run"
    run.mkdir()
    with Ledger(run / "ledger.sqlite") as ledger:
        ledger.append(
            LedgerEvent(
                campaign=run.name,
                event="proposal",
                iteration=1,
                candidate="it001",
                hypothesis="weigh energy",
                patch=PATCH,
            )
        )
    return run


def infeasible_baseline() -> CampaignState:
    return state(metrics=BAD)


@pytest.mark.parametrize("kind", KINDS)
def test_an_agent_proposes_a_new_valid_recipe_and_leaves_the_state_alone(
    kind: str, agent_of
) -> None:
    agent = agent_of(kind)
    st = infeasible_baseline()
    before = st.model_dump()

    proposal = agent.propose(st)

    assert isinstance(agent.name, str) and agent.name
    assert proposal.hypothesis.strip()
    recipe = st.incumbent.patched(proposal.patch)  # raises RecipeError if invalid
    assert recipe != st.incumbent
    assert not st.tried(recipe)
    assert st.model_dump() == before
    if kind == "llm":
        assert proposal.cost is not None and proposal.cost.prompt_tokens > 0
        assert proposal.cost.requests == 1
    else:
        assert proposal.cost is None  # no model asked, nothing spent
