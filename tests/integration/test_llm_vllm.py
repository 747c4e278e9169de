"""Opt-in: a two-iteration tiny campaign driven by a REAL vLLM server (CPU build, SmolLM2-135M).

Runs only with MLIPILOT_TEST_VLLM=1 and the local server installed
(``python -m mlipilot.agents.llm.serve_local install``). The test starts vLLM on a free
loopback port, runs the campaign in this process with ``tool_mode: json_schema`` (SmolLM2's
chat template has no tools), and checks what the ledger recorded. The small model's
proposals are poor; this shows the protocol running for real, with a real tokenizer's counts.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
import yaml
from tiny_campaign import write_tiny_campaign

from mlipilot.agents.llm import serve_local
from mlipilot.campaign.ledger import read_events
from mlipilot.campaign.loop import run_campaign
from mlipilot.config import load_campaign

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("MLIPILOT_TEST_VLLM") != "1"
        or not serve_local.model_dir().joinpath("model.safetensors").exists(),
        reason="opt-in: MLIPILOT_TEST_VLLM=1 and `python -m mlipilot.agents.llm.serve_local "
        "install` first",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            serve_local.server_command(port), stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        serve_local.wait_until_serving(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_two_iterations_through_a_real_vllm(vllm_url: str, tmp_path) -> None:
    path = write_tiny_campaign(tmp_path, name="vllm", data_path=tmp_path / "data", iterations=2)
    data = yaml.safe_load(path.read_text())
    data["agent"] = {
        "kind": "llm",
        "base_url": vllm_url,
        "model": serve_local.MODEL_NAME,
        "tool_mode": "json_schema",
        "temperature": 0.2,
        "max_completion_tokens": 256,
        "extra_body": {"repetition_penalty": 1.1},  # a 135M model repeats itself otherwise
    }
    path.write_text(yaml.safe_dump(data))
    campaign, _ = load_campaign(path)
    outcome = run_campaign(campaign, path, tmp_path / "runs")
    events = read_events(outcome.layout.ledger)
    calls = [e for e in events if e.event == "agent_call"]
    for c in calls:
        d = c.detail
        print(
            f"iteration {c.iteration}: {c.status}, {d['requests']} call(s), "
            f"{d['prompt_tokens']} prompt + {d['completion_tokens']} completion tokens"
        )
    assert [c.iteration for c in calls] == [1, 2]
    for c in calls:
        assert c.detail["prompt_tokens"] > 500 and c.detail["completion_tokens"] > 0
        assert c.detail["transcript"][0]["role"] == "system"
    # Each iteration ended in a trained proposal or a recorded agent failure.
    proposed = {e.iteration for e in events if e.event == "proposal"}
    failed = {e.iteration for e in events if e.event == "agent_failure"}
    assert {1, 2} <= proposed | failed
    assert events[-1].event == "campaign_finished" and events[-1].status == "finished"
