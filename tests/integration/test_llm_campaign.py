"""A real tiny campaign driven by the LLM agent, started from the command line
(``mlipilot run --agent llm --base-url ... --model ...``), against a scripted
OpenAI-compatible server on loopback that stands in for vLLM (which cannot serve a 32B model
here). Real data, real MACE training and MD, real SQLite; only the model's answers are scripted.

Iteration 1: the model answers badly twice (a patch key that does not exist, then arguments
that are not JSON): an agent failure, recorded, and the campaign goes on. Iteration 2: it reads
the baseline's details and proposes a patch, which is trained and scored. Iteration 3: the
campaign's token budget is spent, so the agent is not asked again and the campaign ends.
"""

from __future__ import annotations

import json

import pytest
import yaml
from factories import write_tiny_campaign
from llm_server import HttpError, calls, serve, tool_call
from typer.testing import CliRunner

from mlipilot.campaign.resume import read_prior_run
from mlipilot.cli import app
from mlipilot.ledger import read_events
from mlipilot.rpc.convert import event_to_proto
from mlipilot.rpc.orchestrator_client import describe_event

pytestmark = pytest.mark.slow

MODEL = "Qwen/Qwen3-32B"
USAGE = (1000, 100)  # what the scripted server reports for every call
HYPOTHESIS = "lr 0.001 is too timid for 3 epochs; 0.01 should cut the force error"


def step(message: dict) -> dict:
    return {**message, "_usage": USAGE}


SCRIPT = [
    # iteration 1: two bad answers (max_tool_errors: 1) -> agent failure, the campaign goes on
    step(calls(tool_call("propose", {"hypothesis": "faster", "patch": {"learning_rate": 0.01}}))),
    step(calls(tool_call("propose", "{not json", "call_2"))),
    # iteration 2: read the baseline's details, then a valid proposal
    step(calls(tool_call("get_run", {"iteration": 0}, "call_3"))),
    step(calls(tool_call("propose", {"hypothesis": HYPOTHESIS, "patch": {"lr": 0.01}}, "c4"))),
]


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("llm_campaign")
    path = write_tiny_campaign(tmp, name="llm", data_path=tmp / "data", iterations=3)
    data = yaml.safe_load(path.read_text())
    data["agent"] = {"kind": "rule-based", "max_tool_errors": 1}
    data["budget"]["agent_tokens"] = 3000  # 2 calls of 1100 fit; after 4 calls it is spent
    path.write_text(yaml.safe_dump(data))
    with serve([MODEL], SCRIPT) as server:
        args = ["run", str(path), "--out", str(tmp / "runs"), "--agent", "llm"]
        args += ["--base-url", server.url, "--model", MODEL]
        result = CliRunner().invoke(app, args)
    [run_dir] = (tmp / "runs").iterdir()
    return result, server, run_dir


def test_the_campaign_runs_through_the_model_and_goes_on_after_a_failure(llm_run) -> None:
    result, server, run_dir = llm_run
    assert result.exit_code == 0, result.output
    assert len(server.requests) == len(SCRIPT)  # every scripted answer used, nothing more
    events = read_events(run_dir / "ledger.sqlite")
    failures = [(e.iteration, e.status) for e in events if e.event == "agent_failure"]
    assert failures == [(1, "failed"), (3, "token_budget")]
    proposals = [e for e in events if e.event == "proposal"]
    assert [(p.iteration, p.patch) for p in proposals] == [(0, None), (2, {"lr": 0.01})]
    assert proposals[1].agent == f"llm:{MODEL}" and proposals[1].hypothesis == HYPOTHESIS
    decisions = [e for e in events if e.event == "decision"]
    assert [d.iteration for d in decisions] == [0, 2]
    assert decisions[1].decision in ("ACCEPT", "REVERT") and decisions[1].metrics
    assert events[-1].event == "campaign_finished" and events[-1].status == "finished"


def test_every_message_and_token_is_in_the_ledger(llm_run) -> None:
    _, server, run_dir = llm_run
    events = read_events(run_dir / "ledger.sqlite")
    agent_calls = [e for e in events if e.event == "agent_call"]
    assert [(c.iteration, c.candidate, c.status) for c in agent_calls] == [
        (1, "it001", "failed"),
        (2, "it002", "proposed"),
    ]
    for row in agent_calls:
        assert row.detail["prompt_tokens"] == 2 * USAGE[0]
        assert row.detail["completion_tokens"] == 2 * USAGE[1]
        assert row.detail["total_tokens"] == 2 * sum(USAGE) and row.detail["requests"] == 2
    # The recorded transcript is the conversation the server saw, message for message.
    transcript = agent_calls[1].detail["transcript"]
    assert transcript[: len(server.requests[3]["messages"])] == server.requests[3]["messages"]
    tool_answers = [m["content"] for m in transcript if m["role"] == "tool"]
    assert "MD replicas" in tool_answers[0] and tool_answers[1].startswith("accepted")
    # get_run tells how the baseline's training went, read off its recorded curve.
    training = events[[e.event for e in events].index("training")]
    epochs = sum(1 for e in training.detail["curve"] if e["epoch"] >= 0)
    assert f"training: ok, {epochs} epochs in" in tool_answers[0]
    assert "validation (meV units" in tool_answers[0]
    failed = agent_calls[0].detail["transcript"]
    assert "unknown key(s) ['learning_rate']" in failed[3]["content"]
    assert "not valid JSON" in failed[5]["content"]
    # The agent never saw a path of this machine.
    assert str(run_dir.parent.parent) not in json.dumps(server.requests)
    # Tokens per iteration in the results.
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = {r["candidate"]: r for r in summary["iterations"]}
    assert rows["it002"]["prompt_tokens"] == 2 * USAGE[0]
    assert rows["it002"]["completion_tokens"] == 2 * USAGE[1]
    assert rows["it000"]["prompt_tokens"] is None
    # Over gRPC: one typed event per conversation, readable in `mlipilot watch`.
    line = describe_event(event_to_proto(agent_calls[1], "llm"))
    assert "proposed after 2 call(s), 2000 prompt + 200 completion tokens" in line


def test_agent_call_rows_do_not_disturb_resume(llm_run) -> None:
    """A resume reads the ledger: the extra rows are ignored, the proposal is replayed."""
    _, _, run_dir = llm_run
    events = read_events(run_dir / "ledger.sqlite")
    unfinished = [e for e in events if e.event != "campaign_finished"]
    prior = read_prior_run(run_dir, unfinished)
    assert [p.patch for p in prior.proposals[2]] == [{"lr": 0.01}]
    assert 1 not in prior.proposals  # the failed iteration would be asked again


def test_a_server_that_is_not_there_fails_before_the_baseline_trains(tmp_path) -> None:
    path = write_tiny_campaign(tmp_path, name="down", data_path=tmp_path / "data", iterations=1)
    with serve(["some-other-model"]) as server:
        url = server.url
        args = ["run", str(path), "--out", str(tmp_path / "runs"), "--agent", "llm"]
        result = CliRunner().invoke(app, [*args, "--base-url", url, "--model", MODEL])
    assert result.exit_code == 2
    assert f"{url}: model 'Qwen/Qwen3-32B' is not served there" in " ".join(result.output.split())
    [run_dir] = (tmp_path / "runs").iterdir()
    kinds = [e.event for e in read_events(run_dir / "ledger.sqlite")]
    assert kinds == ["campaign_finished"]  # nothing trained, the reason recorded


def test_a_server_lost_mid_conversation_stops_the_campaign_with_its_tokens_recorded(
    tmp_path,
) -> None:
    """The server answers one call, then fails for good: the campaign stops (it can be
    resumed), and the conversation up to the break is in the ledger with its tokens."""
    path = write_tiny_campaign(tmp_path, name="lost", data_path=tmp_path / "data", iterations=2)
    data = yaml.safe_load(path.read_text())
    data["agent"] = {"kind": "rule-based", "max_retries": 0}
    path.write_text(yaml.safe_dump(data))
    script = [step(calls(tool_call("get_history", {}, "call_1"))), HttpError(503)]
    with serve([MODEL], script) as server:
        args = ["run", str(path), "--out", str(tmp_path / "runs"), "--agent", "llm"]
        result = CliRunner().invoke(app, [*args, "--base-url", server.url, "--model", MODEL])
    assert result.exit_code != 0
    [run_dir] = (tmp_path / "runs").iterdir()
    events = read_events(run_dir / "ledger.sqlite")
    [call] = [e for e in events if e.event == "agent_call"]
    assert (call.iteration, call.status) == (1, "server_error")
    assert "HTTP 503" in call.reason
    assert call.detail["prompt_tokens"] == USAGE[0] and call.detail["requests"] == 1
    assert [m["role"] for m in call.detail["transcript"]][-1] == "tool"
    assert events[-1].event == "campaign_finished" and events[-1].status == "failed"
