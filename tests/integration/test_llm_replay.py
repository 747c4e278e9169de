"""A real Qwen conversation, replayed: the agent meets real model output without the model.

``tests/data/qwen2.5-coder-1.5b-tiny.jsonl`` was recorded from Qwen2.5-Coder-1.5B-Instruct
served by llama.cpp (`make llm-local`), through tests/llm_recording.py's proxy, while the model
drove this very campaign (the tiny Cu campaign, 4 iterations, agent seed 0), again whenever
the agent's prompts change (last: the refusals naming untried levers). Here the scripted
server answers each call with the recorded completion: the model's own text, tool calls as
the real server parsed them (or did not), token counts and finish reasons. The training,
MD and scoring are real and run again.

What it pins down: every recorded answer is used, in order, and the agent sends as many
messages at each call as it did live (no drift); each proposal in the ledger is the one the
model wrote, though it wrote it as a code block the server's parser missed; the tokens in the
ledger are the server's counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from factories import write_tiny_campaign
from llm_recording import read_recording, replay_steps
from llm_server import serve

from mlipilot.agents.llm.agent import _json_object
from mlipilot.campaign.loop import run_campaign
from mlipilot.config import load_campaign
from mlipilot.ledger import read_events

pytestmark = pytest.mark.slow

RECORDING = Path(__file__).parents[1] / "data" / "qwen2.5-coder-1.5b-tiny.jsonl"
MODEL = "Qwen2.5-Coder-1.5B-Instruct"
ITERATIONS = 4


def recorded_agent(base_url: str) -> dict:
    """The agent block the recording was made with (base_url aside)."""
    return {
        "kind": "llm",
        "base_url": base_url,
        "model": MODEL,
        "tool_mode": "tools",
        "temperature": 0.7,
        "max_completion_tokens": 512,
        "timeout_s": 600,
        "seed": 0,
    }


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("replay")
    records = read_recording(RECORDING)
    drifts: list[str] = []
    path = write_tiny_campaign(
        tmp, name="qwen-replay", data_path=tmp / "data", iterations=ITERATIONS
    )
    with serve([MODEL], replay_steps(records, drifts)) as server:
        data = yaml.safe_load(path.read_text())
        data["agent"] = recorded_agent(server.url)
        path.write_text(yaml.safe_dump(data))
        campaign, _ = load_campaign(path)
        outcome = run_campaign(campaign, path, tmp / "runs")
    return records, drifts, server, read_events(outcome.layout.ledger)


def written_call(record: dict) -> dict | None:
    """The propose call the model meant in a recorded answer, read from the raw response:
    parsed by the server, or written in its text."""
    message = record["response"]["choices"][0]["message"]
    for call in message.get("tool_calls") or []:
        if call["function"]["name"] == "propose":
            return json.loads(call["function"]["arguments"])
    obj = _json_object(message.get("content"))
    if obj and obj.get("name") == "propose":
        return obj["arguments"]
    return None


def test_every_recorded_answer_is_replayed_in_step(replayed) -> None:
    records, drifts, server, events = replayed
    assert drifts == []
    assert len(server.requests) == len(records)
    # The model is asked with the tools and the sampling seed it was asked with live.
    for sent, record in zip(server.requests, records, strict=True):
        assert sent.get("seed") == record["request"].get("seed")
        assert [t["function"]["name"] for t in sent["tools"]] == [
            t["function"]["name"] for t in record["request"]["tools"]
        ]
    assert events[-1].event == "campaign_finished" and events[-1].status == "finished"


def test_the_proposals_are_the_calls_the_model_wrote(replayed) -> None:
    records, _, _, events = replayed
    # Qwen at 1.5B writes its calls as text; the server's hermes-style parser misses them.
    missed = [r for r in records if not r["response"]["choices"][0]["message"].get("tool_calls")]
    assert missed, "the recording should hold calls the server did not parse"
    proposals = [e for e in events if e.event == "proposal" and e.iteration]
    calls = [e for e in events if e.event == "agent_call"]
    accepted = []
    answer = iter(records)
    for call in calls:  # each conversation's last answer is its proposal, if it proposed
        answers = [next(answer) for _ in range(call.detail["requests"])]
        if call.status == "proposed":
            accepted.append(written_call(answers[-1]))
    assert [p.patch for p in proposals] == [a["patch"] for a in accepted]
    assert [p.hypothesis for p in proposals] == [a["hypothesis"].strip() for a in accepted]


def test_the_ledger_counts_the_servers_tokens(replayed) -> None:
    records, _, _, events = replayed
    calls = [e for e in events if e.event == "agent_call"]
    usage = [r["response"]["usage"] for r in records]
    assert sum(c.detail["prompt_tokens"] for c in calls) == sum(u["prompt_tokens"] for u in usage)
    completion = sum(u["completion_tokens"] for u in usage)
    assert sum(c.detail["completion_tokens"] for c in calls) == completion
    # The text as the model wrote it stays in the transcript beside the call taken from it.
    texts = [m.get("text") for c in calls for m in c.detail["transcript"] if m.get("text")]
    assert any("```" in t or '"name"' in t for t in texts)
    # Live, the model sent a refused patch again: the earlier copy left its context (the
    # replay sends as many messages as live, so this is pinned), the ledger keeps it.
    assert any(m.get("hidden") for c in calls for m in c.detail["transcript"])
