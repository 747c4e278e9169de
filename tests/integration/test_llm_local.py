"""Opt-in: a two-iteration tiny campaign driven by a REAL local model server (`make test-llm`).

Runs only with MLIPILOT_TEST_LLM=1 and the server installed (`make llm-local`'s install step).
It serves LLM_MODEL (default qwen: Qwen2.5-Coder-1.5B-Instruct) on LLM_ENGINE (default
llama.cpp; or vllm) on a free loopback port, runs the campaign in this process with the
model's tool mode (tools for Qwen, json_schema for SmolLM2, whose template has no tools) and
checks what the ledger recorded: real tokenizer counts, a real chat template, real tool-call
parsing. A 1.5B model's proposals are often poor; each iteration must still end in a trained
proposal or a recorded agent failure.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
import yaml
from factories import write_tiny_campaign

from mlipilot.agents.llm import serve_local
from mlipilot.agents.llm.local_models import model
from mlipilot.campaign.loop import run_campaign
from mlipilot.config import load_campaign
from mlipilot.ledger import read_events

SPEC = model(os.environ.get("LLM_MODEL", serve_local.DEFAULT_MODEL))
ENGINE = os.environ.get("LLM_ENGINE", serve_local.DEFAULT_ENGINE)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("MLIPILOT_TEST_LLM") != "1" or not serve_local.installed(SPEC, ENGINE),
        reason="opt-in: MLIPILOT_TEST_LLM=1 and `make llm-local` (its install step) first",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    log = tmp_path_factory.mktemp("llm") / "server.log"
    cmd, env = serve_local.server_command(SPEC, ENGINE, port)
    with log.open("w") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        serve_local.wait_until_serving(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_two_iterations_through_a_real_server(server_url: str, tmp_path) -> None:
    path = write_tiny_campaign(tmp_path, name="llm", data_path=tmp_path / "data", iterations=2)
    data = yaml.safe_load(path.read_text())
    data["agent"] = {
        "kind": "llm",
        "base_url": server_url,
        "model": SPEC.served_name,
        "tool_mode": SPEC.tool_mode,
        "temperature": 0.2,
        "max_completion_tokens": 512,
        "timeout_s": 600,
    }
    if SPEC.key == "smollm2":  # a 135M model repeats itself otherwise
        data["agent"]["extra_body"] = {"repetition_penalty": 1.1}
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
