"""The llm and replay agents from a campaign file or the command line, and their ledger rows
as gRPC events: bad values name the key; replay proposes what a ledger recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from llm_server import serve

from mlipilot.agents import make_agent
from mlipilot.agents.base import AgentGaveUp, CampaignState
from mlipilot.agents.llm import LlmAgent, LlmServerError
from mlipilot.agents.replay import ReplayAgent
from mlipilot.config import AgentConfig, load_campaign, override
from mlipilot.errors import MlipilotError
from mlipilot.ledger import Ledger, LedgerEvent
from mlipilot.recipe import Recipe
from mlipilot.rpc.convert import event_to_proto
from mlipilot.rpc.orchestrator_client import describe_event
from mlipilot.v1 import orchestrator_pb2

CAMPAIGN = """\
name: llm-small
data: {path: data/cu}
scorecard: spec.yaml
baseline: {r_max: 4.0}
agent:
"""


def load(tmp_path: Path, agent_yaml: str):
    path = tmp_path / "campaign.yaml"
    path.write_text(CAMPAIGN + agent_yaml)
    return load_campaign(path)[0]


def load_error(tmp_path: Path, agent_yaml: str) -> str:
    with pytest.raises(MlipilotError) as info:
        load(tmp_path, agent_yaml)
    return str(info.value)


def test_an_llm_agent_from_the_campaign_file(tmp_path: Path) -> None:
    with serve(["Qwen/Qwen3-32B"]) as server:
        campaign = load(
            tmp_path,
            f"  kind: llm\n  base_url: {server.url}\n  model: Qwen/Qwen3-32B\n"
            "  max_tokens_per_iteration: 40000\n  tool_mode: json_schema\n",
        )
        agent = make_agent(campaign.agent)
    assert isinstance(agent, LlmAgent)
    assert agent.name == "llm:Qwen/Qwen3-32B"
    assert agent.settings.tool_mode == "json_schema"
    assert agent.client.base_url == server.url


def test_making_an_llm_agent_checks_the_server_at_once(tmp_path: Path) -> None:
    """Before the baseline trains: a model that is not served is an error naming it."""
    with serve(["SmolLM2-135M-Instruct"]) as server:
        config = AgentConfig(kind="llm", base_url=server.url, model="Qwen/Qwen3-32B")
        with pytest.raises(LlmServerError, match="'Qwen/Qwen3-32B' is not served there"):
            make_agent(config)


@pytest.mark.parametrize(
    ("agent_yaml", "expected"),
    [
        ("  kind: llm\n  model: m\n", "agent kind 'llm' needs agent.base_url"),
        ("  kind: llm\n  base_url: http://h/v1\n", "needs agent.model"),
        ("  kind: llm\n  base_url: vllm:8000\n  model: m\n", "agent.base_url: String should"),
        ("  kind: llm\n  base_url: http://h/v1\n  model: m\n  tool_mode: xml\n", "agent.tool_mode"),
        ("  kind: llm\n  base_url: http://h/v1\n  model: m\n  max_turns: 0\n", "agent.max_turns"),
        ("  kind: replay\n", "agent kind 'replay' needs agent.ledger"),
        ("  kind: gpt\n", "agent.kind"),
    ],
)
def test_bad_agent_settings_name_the_key(tmp_path: Path, agent_yaml: str, expected: str) -> None:
    message = load_error(tmp_path, agent_yaml)
    assert expected in message
    assert "campaign.yaml" in message


def test_command_line_turns_the_agent_into_an_llm(tmp_path: Path) -> None:
    campaign = load(tmp_path, "  kind: rule-based\n")
    changed = override(campaign, agent="llm", base_url="http://127.0.0.1:8000/v1", model="smol")
    assert (changed.agent.kind, changed.agent.model) == ("llm", "smol")
    with pytest.raises(MlipilotError, match=r"agent.base_url"):
        override(campaign, agent="llm", model="smol")
    with pytest.raises(MlipilotError, match=r"agent.tool_mode"):
        override(changed, tool_mode="grammar")


def test_an_api_key_variable_that_is_not_set_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLIPILOT_TEST_NO_KEY", raising=False)
    config = AgentConfig(
        kind="llm", base_url="http://h/v1", model="m", api_key_env="MLIPILOT_TEST_NO_KEY"
    )
    with pytest.raises(MlipilotError, match=r"agent.api_key_env: environment variable"):
        make_agent(config)


def recorded_ledger(folder: Path) -> Path:
    """A ledger as a campaign with two candidates per iteration writes it."""
    folder.mkdir()
    rows = [
        ("proposal", 0, "it000", None, "baseline"),
        ("agent_call", 1, "it001-1", None, None),
        ("proposal", 1, "it001-2", {"lr": 0.02}, "second of iteration 1"),
        ("proposal", 1, "it001-1", {"lr": 0.01}, "first of iteration 1"),
        ("proposal", 2, "it002-1", {"ema": True}, "EMA"),
    ]
    with Ledger(folder / "ledger.sqlite") as ledger:
        for event, iteration, candidate, patch, hypothesis in rows:
            ledger.append(
                LedgerEvent(
                    campaign="recorded",
                    event=event,
                    iteration=iteration,
                    candidate=candidate,
                    patch=patch,
                    hypothesis=hypothesis,
                )
            )
    return folder


def state(iteration: int, pending: list[Recipe]) -> CampaignState:
    from test_llm_agent import campaign_state

    # Its place in the iteration: after the recipes proposed before it (the loop's ``slot``).
    return campaign_state(iteration=iteration, pending=pending, slot=len(pending))


def test_replay_proposes_the_recorded_proposals_in_order(tmp_path: Path) -> None:
    run = recorded_ledger(tmp_path / "recorded")
    agent = make_agent(AgentConfig(kind="replay", ledger=run))
    assert isinstance(agent, ReplayAgent) and agent.name == "replay:recorded"
    first = agent.propose(state(1, []))
    second = agent.propose(state(1, [Recipe(lr=0.01)]))
    assert (first.patch, first.hypothesis) == ({"lr": 0.01}, "first of iteration 1")
    assert second.patch == {"lr": 0.02}
    assert agent.propose(state(2, [])).patch == {"ema": True}
    with pytest.raises(AgentGaveUp, match="no proposal 2 for iteration 2"):
        agent.propose(state(2, [Recipe(ema=True)]))
    with pytest.raises(AgentGaveUp, match="iteration 3"):
        agent.propose(state(3, []))


def test_replay_of_a_folder_without_a_ledger_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(MlipilotError, match=r"agent.ledger: no ledger at"):
        make_agent(AgentConfig(kind="replay", ledger=tmp_path))


def test_replay_ledger_is_resolved_against_the_campaign_file(tmp_path: Path) -> None:
    campaign = load(tmp_path, "  kind: replay\n  ledger: runs/old\n")
    assert campaign.agent.ledger == tmp_path / "runs" / "old"


def test_an_agent_call_row_becomes_its_event() -> None:
    row = LedgerEvent(
        id=7,
        campaign="c",
        event="agent_call",
        iteration=2,
        candidate="it002",
        agent="llm:smol",
        status="failed",
        reason="3 bad answers",
        duration_s=4.5,
        detail={
            "model": "smol",
            "prompt_tokens": 1200,
            "completion_tokens": 80,
            "requests": 3,
            "transcript": [{"role": "system"}, {"role": "user"}, {"role": "assistant"}],
        },
    )
    event = event_to_proto(row, "c")
    assert event.WhichOneof("event") == "agent_call"
    call = event.agent_call
    assert (call.prompt_tokens, call.completion_tokens, call.requests) == (1200, 80, 3)
    assert (call.messages, call.status, call.model) == (3, "failed", "smol")
    line = describe_event(event)
    assert "1200 prompt + 80 completion tokens" in line and "3 bad answers" in line


def test_new_agent_failure_kinds_map_to_the_enum() -> None:
    for status, kind in [
        ("failed", orchestrator_pb2.AGENT_FAILURE_KIND_FAILED),
        ("token_budget", orchestrator_pb2.AGENT_FAILURE_KIND_TOKEN_BUDGET),
    ]:
        row = LedgerEvent(id=1, campaign="c", event="agent_failure", status=status, reason="r")
        assert event_to_proto(row, "c").agent_failure.kind == kind
