"""The LLM agent against a scripted OpenAI-compatible server on loopback (standing in for vLLM,
which cannot serve a 32B model here): real HTTP, real JSON, the agent's real retries."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from factories import make_spec
from llm_server import HttpError, calls, serve, text, tool_call

from mlipilot.agents import make_agent
from mlipilot.agents.base import (
    AgentFailed,
    CampaignState,
    HistoryEntry,
    Proposal,
    TrainingSummary,
)
from mlipilot.agents.llm import LlmAgent, LlmServerError, LlmSettings
from mlipilot.agents.llm.agent import NO_CALL
from mlipilot.config import AgentConfig
from mlipilot.recipe import Recipe
from mlipilot.scoring.result import ScoreResult

MODEL = "Qwen/Qwen3-32B"
ENERGY, FORCES, MD = "energy_mae_meV_per_atom", "force_mae_meV_per_A", "md_survival_fraction"
SPEC = make_spec(
    "llm-unit",
    [
        {"metric": ENERGY, "max": 40.0, "unit": "meV/atom"},
        {"metric": FORCES, "max": 150.0, "unit": "meV/Å"},
        {"metric": MD, "min": 1.0, "unit": "fraction"},
    ],
    {ENERGY: 1.0, FORCES: 1.0},
)
TRACE = "/secret/runs/tiny/it000/md/replica-0.csv"  # a path the model must never see
REPLICAS = [
    {
        "start_frame": 0,
        "temperature_K": 600.0,
        "seed": 0,
        "status": "collapsed",
        "survived_steps": 12,
        "survived_ps": 0.024,
        "failure_ps": 0.026,
        "max_temperature_K": 1450.0,
        "min_distance_A": 1.2,
        "nve_drift_meV_per_atom_per_ps": None,
        "trace_file": TRACE,
    }
]
BASELINE = Recipe(e0s="zero", scaling="no_scaling", lr=0.001)


def baseline_result() -> ScoreResult:
    return ScoreResult.judged(
        SPEC,
        {ENERGY: 900.0, FORCES: 400.0, MD: 0.0},
        spec_hash="s",
        test_hash="t",
        hardware={"host": "node-17"},
        details={"md_replicas": REPLICAS},
    )


# A baseline's curve as the trainer records it (mace's log): epoch -1 is before training.
CURVE = [
    {"epoch": -1, "loss": 0.158, "valid": {"MAE_E_per_atom": 92.5, "MAE_F": 553.9}},
    *(
        {"epoch": e, "loss": 0.155 - 0.006 * e, "valid": {"MAE_E_per_atom": 91.0 - 2 * e}}
        for e in range(10)
    ),
]


def test_training_summary_reads_the_curve() -> None:
    t = TrainingSummary.from_curve("ok", CURVE, 23.4)
    assert t.epochs == 10  # epoch -1 is not an epoch trained
    assert t.first_loss == pytest.approx(0.155) and t.last_loss == pytest.approx(0.101)
    assert (t.best_epoch, t.best_loss) == (9, pytest.approx(0.101))
    # The last 3 epochs against the one before them: 0.101 / 0.119 - 1.
    assert t.recent_loss_change == pytest.approx(0.101 / 0.119 - 1)
    assert t.first_valid == {"MAE_E_per_atom": 92.5, "MAE_F": 553.9}
    assert t.last_valid == {"MAE_E_per_atom": 73.0}
    flat = TrainingSummary.from_curve(
        "ok", [{"epoch": e, "loss": 1.0, "valid": {}} for e in range(5)], 1
    )
    assert flat.recent_loss_change == 0.0 and flat.last_valid == {}
    failed = TrainingSummary.from_curve("failed", [], 2.0, cause="loss is NaN at epoch 0")
    assert failed.epochs == 0 and failed.last_loss is None


def campaign_state(**changes: Any) -> CampaignState:
    result = baseline_result()
    entry = HistoryEntry(
        iteration=0,
        hypothesis="baseline recipe from the campaign file",
        patch={},
        recipe=BASELINE,
        verdict="BASELINE",
        reason="first result",
        result=result,
        training=TrainingSummary.from_curve("ok", CURVE, 23.4),
    )
    data: dict[str, Any] = {
        "iteration": 1,
        "iterations_total": 3,
        "spec": SPEC,
        "baseline": BASELINE,
        "incumbent": BASELINE,
        "incumbent_result": result,
        "history": [entry],
    }
    return CampaignState(**{**data, **changes})


def agent_for(url: str, **settings: Any) -> LlmAgent:
    base = {"base_url": url, "model": MODEL, "backoff_s": 0.01, "max_retries": 2}
    return LlmAgent(LlmSettings(**{**base, **settings}))


GOOD = {"hypothesis": "E0s and scaling fix the energy offset", "patch": {"e0s": "average"}}


def test_tool_calls_lead_to_a_validated_proposal_with_its_cost() -> None:
    script = [
        calls(tool_call("get_run", {"iteration": 0}, "call_a")),
        calls(tool_call("propose", GOOD, "call_b")),
    ]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url).propose(campaign_state())
    assert proposal.patch == {"e0s": "average"}
    assert proposal.hypothesis == GOOD["hypothesis"]
    # The run details went back as a tool message: margins and MD outcome, no path, no host.
    second = server.requests[1]["messages"]
    tool_msg = next(m for m in second if m["role"] == "tool")
    assert tool_msg["tool_call_id"] == "call_a"
    assert "collapsed" in tool_msg["content"] and "margin" in tool_msg["content"]
    # ... and how training went: the loss still falling when the epochs ran out.
    assert "training: ok, 10 epochs in 23 s" in tool_msg["content"]
    assert (
        "still falling" in tool_msg["content"]
        and "MAE_E_per_atom 92.5 -> 73" in tool_msg["content"]
    )
    everything_sent = json.dumps(server.requests)
    assert TRACE not in everything_sent and "/secret" not in everything_sent
    assert "node-17" not in everything_sent
    # The assistant's tool-call turn goes back with content "" (vLLM sent null).
    assistant = next(m for m in second if m["role"] == "assistant")
    assert assistant["content"] == ""
    assert assistant["tool_calls"][0]["function"]["name"] == "get_run"
    assert server.requests[0]["tools"] and server.requests[0]["tool_choice"] == "auto"
    # Tokens: what the server reported, summed; the transcript holds every message.
    cost = proposal.cost
    assert cost is not None and cost.requests == 2
    assert cost.prompt_tokens == sum(u["prompt_tokens"] for u in server.usage)
    assert cost.completion_tokens == sum(u["completion_tokens"] for u in server.usage)
    roles = [m["role"] for m in cost.transcript]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert cost.transcript[-1]["content"].startswith("accepted")
    assert "cost" not in proposal.model_dump()  # never part of the patch logic
    assert cost.calls[0]["params"]["tool_choice"] == "auto"
    assert "propose" in cost.calls[0]["tools"] and cost.calls[0]["finish_reason"] == "tool_calls"


def test_a_batch_larger_than_the_training_data_is_refused_by_the_tool() -> None:
    """The state says how many frames training sees; the tool refuses a batch that cannot
    train on them, before the loop would (and before mace fails after its start-up)."""
    script = [
        calls(tool_call("propose", {"hypothesis": "big batches", "patch": {"batch_size": 60}})),
        calls(tool_call("propose", GOOD, "c2")),
    ]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url).propose(campaign_state(train_frames=48))
    assert proposal.patch == GOOD["patch"]
    first_prompt = server.requests[0]["messages"][1]["content"]
    assert "Training data: 48 frames (batch_size at most 44)." in first_prompt
    refusal = server.requests[1]["messages"][-1]["content"]
    assert refusal.startswith("error: proposal refused: batch_size 60 is larger than the 44")


def test_a_stress_loss_on_data_without_stress_is_refused_by_the_tool() -> None:
    """Molecules have no stress: the prompt says so, and the tool refuses loss=stress
    before mace would quietly train it at stress weight zero."""
    script = [
        calls(tool_call("propose", {"hypothesis": "fit stress", "patch": {"loss": "stress"}})),
        calls(tool_call("propose", GOOD, "c2")),
    ]
    with serve([MODEL], script) as server:
        state = campaign_state(train_frames=48, train_stress=False)
        proposal = agent_for(server.url).propose(state)
    assert proposal.patch == GOOD["patch"]
    assert (
        "No stress labels (loss=stress unavailable)."
        in server.requests[0]["messages"][1]["content"]
    )
    refusal = server.requests[1]["messages"][-1]["content"]
    assert refusal.startswith("error: proposal refused: loss=stress trains on stress labels")


def test_malformed_arguments_and_a_refused_patch_go_back_as_tool_errors() -> None:
    script = [
        calls(tool_call("propose", '{"hypothesis": "x", "patch": {"lr": 0.01', "c1")),
        calls(tool_call("propose", {"hypothesis": "huge lr", "patch": {"lr": 5.0}}, "c2")),
        calls(tool_call("read_minds", {}, "c3")),
        calls(tool_call("propose", {"hypothesis": "moderate lr", "patch": {"lr": 0.01}}, "c4")),
    ]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url).propose(campaign_state())
    assert proposal.patch == {"lr": 0.01}
    tool_answers = [m["content"] for m in server.requests[-1]["messages"] if m["role"] == "tool"]
    assert "not valid JSON" in tool_answers[0]
    assert "lr = 5.0 is not allowed" in tool_answers[1] and "lr <= 0.1" in tool_answers[1]
    assert "unknown tool 'read_minds'" in tool_answers[2]


def test_a_tried_recipe_is_refused() -> None:
    tried = {"hypothesis": "back to the baseline", "patch": {"lr": 0.001, "ema": False}}
    script = [calls(tool_call("propose", tried)), calls(tool_call("propose", GOOD, "c2"))]
    with serve([MODEL], script) as server:
        agent_for(server.url).propose(campaign_state())
    refusal = server.requests[1]["messages"][-1]["content"]
    # it names the values that already hold, and the levers nobody has pulled
    assert "changes nothing: the incumbent's ema is false, lr is 0.001 already" in refusal
    assert "keys no candidate has changed yet: e0s, scaling," in refusal


def test_a_recipe_tried_before_is_refused_naming_its_iteration_and_untried_keys() -> None:
    """Seen with Qwen2.5-Coder-1.5B: told only "tried already", it proposed a no-op next."""
    state = campaign_state(iteration=2)
    tried = BASELINE.patched({"lr": 0.01})
    entry = state.history[0].model_copy(
        update={"iteration": 1, "patch": {"lr": 0.01}, "recipe": tried, "verdict": "REVERT"}
    )
    entry = entry.model_copy(update={"reason": "violation 5.6 not below 5.5"})
    state = state.model_copy(update={"history": [*state.history, entry]})
    again = {"hypothesis": "faster", "patch": {"lr": 0.01}}
    script = [calls(tool_call("propose", again)), calls(tool_call("propose", GOOD, "c2"))]
    with serve([MODEL], script) as server:
        agent_for(server.url).propose(state)
    refusal = server.requests[1]["messages"][-1]["content"]
    assert "tried already at iteration 1 (REVERT: violation 5.6 not below 5.5)" in refusal
    untried = refusal.split("keys no candidate has changed yet: ")[1].split(", ")
    assert "lr" not in untried and "e0s" in untried and "seed" not in untried
    first = server.requests[0]["messages"][1]["content"]
    assert "keys no candidate has changed yet: e0s" in first and ", lr," not in first


def test_a_copied_template_is_not_a_proposal() -> None:
    """Qwen2.5-Coder-1.5B, told how to call, echoed the example back: it must not be trained.
    No example the model sees is a patch it could copy."""
    echoed = text(NO_CALL.removeprefix("error: no tool call found. "))
    placeholder = calls(tool_call("propose", {"hypothesis": "...", "patch": {"lr": 0.005}}))
    script = [text("no idea"), echoed, placeholder, calls(tool_call("propose", GOOD, "c4"))]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url).propose(campaign_state())
    assert proposal.patch == GOOD["patch"]
    answers = [r["messages"][-1]["content"] for r in server.requests[1:]]
    assert answers[1] == NO_CALL  # the echoed form holds no JSON: no call is read from it
    assert answers[2].endswith("hypothesis must say in words why the change should help")
    shown = json.dumps(server.requests[0]) + NO_CALL
    assert '"lr": 0.005' not in shown and "0.005" not in shown


def test_a_refused_call_sent_again_is_named_and_warms_the_sampling() -> None:
    """Qwen2.5-Coder-1.5B sent the incumbent's own values three times at temperature 0.7."""
    noop = {"hypothesis": "same", "patch": {"lr": 0.001, "energy_weight": 1.0}}
    # the same patch: respaced, reordered, 1 for 1.0, and another hypothesis
    spaced = '{"patch": {"energy_weight": 1,   "lr": 0.001}, "hypothesis": "same again"}'
    script = [
        calls(tool_call("propose", noop)),
        calls(tool_call("propose", spaced, "c2")),
        calls(tool_call("propose", noop, "c3")),
        calls(tool_call("propose", GOOD, "c4")),
    ]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url, temperature=0.7, max_tool_errors=5).propose(
            campaign_state()
        )
    answers = [r["messages"][-1]["content"] for r in server.requests[1:]]
    assert answers[0].startswith("error: proposal refused: the patch changes nothing")
    for again in answers[1:]:
        assert again.startswith("error: you sent this same call before and it was refused")
        assert "proposal refused: the patch changes nothing" in again
    assert [r["temperature"] for r in server.requests] == pytest.approx([0.7, 0.7, 1.0, 1.3])
    # Each refusal names untried levers with their ranges; a repeat adds others each time.
    assert "untried, for example: e0s in [" in answers[0] and "scaling in [" in answers[0]
    first, second = (a.partition("Also untried, for example: ")[2] for a in answers[1:])
    assert first and second and first.split(";")[0] != second.split(";")[0]
    assert first.split(" ")[0] not in answers[0].partition("for example: ")[2]
    # One copy of the refused call in the context at a time: the model saw its patch once in
    # each request, while the ledger keeps every copy, marked.
    for request in server.requests[1:]:
        sent = [m for m in request["messages"] if m["role"] == "assistant"]
        assert len(sent) == 1, sent
    transcript = proposal.cost.transcript
    assert sum(1 for m in transcript if m["role"] == "assistant") == 4
    assert sum(1 for m in transcript if m.get("hidden")) == 4  # two exchanges left out


def test_warming_stops_at_its_cap_and_never_cools_a_hot_setting() -> None:
    from mlipilot.agents.llm.agent import _warmed

    assert _warmed(0.7, 0) == 0.7 and _warmed(0.7, 10) == 1.5 and _warmed(1.8, 2) == 1.8


def test_each_call_sends_a_sampling_seed_from_the_agent_seed() -> None:
    """Repeats of a benchmark differ by the agent's seed; the same seed samples the same."""
    refused = calls(tool_call("propose", {"hypothesis": "guess", "patch": {"no_such_key": 1}}))

    def seeds(agent_seed: int | None, iteration: int) -> list[int | None]:
        with serve([MODEL], [refused, calls(tool_call("propose", GOOD))]) as server:
            agent_for(server.url, seed=agent_seed).propose(campaign_state(iteration=iteration))
        return [r.get("seed") for r in server.requests]

    first, second = seeds(7, 1)
    assert isinstance(first, int) and second == first + 1  # a retry does not resample the same
    assert seeds(7, 1) == [first, second]
    assert seeds(8, 1)[0] != first and seeds(7, 2)[0] != first
    assert seeds(None, 1) == [None, None]


def test_bad_answers_past_the_limit_fail_the_iteration_with_the_transcript() -> None:
    bad = calls(tool_call("propose", {"hypothesis": "guess", "patch": {"no_such_key": 1}}))
    with (
        serve([MODEL], [bad] * 3) as server,
        pytest.raises(AgentFailed, match="3 bad answers") as info,
    ):
        agent_for(server.url, max_tool_errors=2).propose(campaign_state())
    assert len(server.requests) == 3
    cost = info.value.cost
    assert cost is not None and cost.requests == 3
    assert cost.prompt_tokens == sum(u["prompt_tokens"] for u in server.usage)
    assert "unknown key(s) ['no_such_key']" in cost.transcript[-1]["content"]


def test_tool_calls_written_as_text_are_taken_as_calls() -> None:
    """A server whose parser misses the call (small models, templates without tools)."""
    script = [
        text("I think we should raise the learning rate."),
        text('<think>{"not": "this"}</think><tool_call>{"name": "get_history", "arguments": {}}'),
        text("```json\n" + json.dumps(GOOD) + "\n```"),
    ]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url).propose(campaign_state())
    assert proposal.patch == GOOD["patch"]
    sent = server.requests[2]["messages"]
    assert "no tool call found" in sent[3]["content"]
    # The call in the text went back as a real tool call, answered by a tool message.
    assert sent[4]["content"] == "" and sent[4]["tool_calls"][0]["function"]["name"] == (
        "get_history"
    )
    assert sent[5]["role"] == "tool" and "BASELINE" in sent[5]["content"]
    assert sent[5]["tool_call_id"] == sent[4]["tool_calls"][0]["id"]
    assert proposal.cost is not None and "<tool_call>" in proposal.cost.transcript[4]["text"]


def test_429_and_500_are_retried_then_the_answer_is_used() -> None:
    script = [
        HttpError(429, headers={"Retry-After": "0"}),
        HttpError(500),
        calls(tool_call("propose", GOOD)),
    ]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url).propose(campaign_state())
    assert proposal.patch == GOOD["patch"]
    assert len(server.requests) == 3
    assert proposal.cost is not None and proposal.cost.calls[0]["http_attempts"] == 3


def test_retries_exhausted_is_a_clear_error_naming_the_url() -> None:
    with (
        serve([MODEL], [HttpError(503)] * 5) as server,
        pytest.raises(LlmServerError, match="no answer after 3 attempts") as info,
    ):
        agent_for(server.url).propose(campaign_state())
    assert f"{server.url}/chat/completions" in str(info.value)
    assert len(server.requests) == 3  # max_retries=2: three attempts, then stop


def test_a_server_lost_mid_conversation_keeps_what_the_answered_calls_cost() -> None:
    """The first call is answered, then the server fails for good: the error carries the
    conversation so far, so the loop records the tokens already spent."""
    script = [calls(tool_call("get_history", {}, "call_a")), *[HttpError(503)] * 3]
    with (
        serve([MODEL], script) as server,
        pytest.raises(LlmServerError, match="no answer after 3 attempts") as info,
    ):
        agent_for(server.url).propose(campaign_state())
    cost = info.value.cost
    assert cost is not None and cost.requests == 1
    assert cost.prompt_tokens == server.usage[0]["prompt_tokens"] > 0
    assert [m["role"] for m in cost.transcript] == ["system", "user", "assistant", "tool"]


def test_a_client_error_is_not_retried() -> None:
    with (
        serve([MODEL], [HttpError(400, '{"error": "bad request"}')]) as server,
        pytest.raises(LlmServerError, match="HTTP 400"),
    ):
        agent_for(server.url).propose(campaign_state())
    assert len(server.requests) == 1


def test_model_not_served_names_the_model_and_what_is_served() -> None:
    with (
        serve(["SmolLM2-135M-Instruct"]) as server,
        pytest.raises(LlmServerError) as info,
    ):
        agent_for(server.url).propose(campaign_state())
    message = str(info.value)
    assert server.url in message and MODEL in message and "SmolLM2-135M-Instruct" in message
    assert info.value.fields == ("agent.model",)
    assert server.requests == []  # nothing was asked of a model that is not there


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_is_a_clear_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(LlmServerError, match="no server answers there") as info:
        agent_for(url).propose(campaign_state())
    assert f"{url}/models" in str(info.value)
    assert info.value.fields == ("agent.base_url",)
    assert time.monotonic() - start < 5


def test_mistral_gets_nine_character_alphanumeric_tool_call_ids() -> None:
    model = "mistralai/Mistral-Small-3.1-24B-Instruct-2503"
    script = [
        calls(tool_call("get_history", {}, "chatcmpl-tool-5f1e2d3c4b5a69788")),
        calls(tool_call("get_recipe_space", {}, "AbC123xYz")),
        calls(tool_call("propose", GOOD, "")),
    ]
    with serve([model], script) as server:
        agent_for(server.url, model=model).propose(campaign_state())
    sent = server.requests[-1]["messages"]
    ids = [c["id"] for m in sent if m["role"] == "assistant" for c in m["tool_calls"]]
    ids += [m["tool_call_id"] for m in sent if m["role"] == "tool"]
    assert len(ids) == 4
    assert all(len(i) == 9 and i.isalnum() for i in ids), ids
    assert "AbC123xYz" in ids  # a valid id is kept as the server gave it
    # Each tool answer refers to the call it answers.
    calls_ids = [c["id"] for m in sent if m["role"] == "assistant" for c in m["tool_calls"]]
    assert calls_ids == [m["tool_call_id"] for m in sent if m["role"] == "tool"]


def test_json_schema_mode_asks_for_structured_output_and_corrects_a_bad_answer() -> None:
    script = [
        text('{"hypothesis": "more channels", "patch": {"num_channels": 4096}}'),
        text(json.dumps(GOOD)),
    ]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url, tool_mode="json_schema").propose(campaign_state())
    assert proposal.patch == GOOD["patch"]
    first = server.requests[0]
    assert "tools" not in first
    schema = first["response_format"]["json_schema"]["schema"]
    assert first["response_format"]["type"] == "json_schema"
    assert schema["properties"]["patch"]["properties"]["lr"]["maximum"] == 0.1
    assert schema["properties"]["patch"]["additionalProperties"] is False
    assert "num_channels = 4096 is not allowed" in server.requests[1]["messages"][-1]["content"]
    assert proposal.cost is not None and proposal.cost.requests == 2


def test_the_token_limit_per_iteration_stops_the_conversation() -> None:
    script = [calls(tool_call("get_history", {}, f"c{i}")) for i in range(5)]
    with (
        serve([MODEL], script) as server,
        pytest.raises(AgentFailed, match="token limit of 1500 per iteration") as info,
    ):
        agent_for(server.url, max_tokens_per_iteration=1500).propose(campaign_state())
    cost = info.value.cost
    assert cost is not None and cost.total_tokens >= 1500
    assert len(server.requests) == cost.requests < 5
    # No call asks for more completion tokens than the iteration has left.
    assert all(r["max_tokens"] <= 1500 for r in server.requests)


def test_forcing_the_propose_tool_and_qwen_thinking_switch_are_sent() -> None:
    with serve([MODEL], [calls(tool_call("propose", GOOD))]) as server:
        agent_for(server.url, tool_choice="propose", thinking=False).propose(campaign_state())
    sent = server.requests[0]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "propose"}}
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}


def test_reasoning_is_recorded_but_not_sent_back() -> None:
    thinking = calls(tool_call("get_history", {}, "c1"))
    thinking["reasoning_content"] = "Energy is far off; E0s first."
    script = [thinking, calls(tool_call("propose", GOOD, "c2"))]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url).propose(campaign_state())
    assert "Energy is far off" not in json.dumps(server.requests[1]["messages"])
    assert proposal.cost is not None
    assert proposal.cost.transcript[2]["reasoning"] == "Energy is far off; E0s first."


def test_api_key_from_the_named_variable_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLIPILOT_LLM_KEY", "sk-test-123")
    with serve([MODEL], [calls(tool_call("propose", GOOD))]) as server:
        config = AgentConfig(
            kind="llm", base_url=server.url, model=MODEL, api_key_env="MLIPILOT_LLM_KEY"
        )
        agent = make_agent(config)
        assert isinstance(agent.propose(campaign_state()), Proposal)
    assert server.headers[0]["Authorization"] == "Bearer sk-test-123"


def test_a_state_costs_few_tokens() -> None:
    """The whole first prompt (rules, state, recipe space, tool definitions) stays small:
    the paper's Qwen3-32B spent 162k tokens per iteration."""
    history = campaign_state().history * 12
    with serve([MODEL], [calls(tool_call("propose", GOOD))]) as server:
        proposal = agent_for(server.url).propose(campaign_state(history=history))
    assert proposal.cost is not None
    assert proposal.cost.prompt_tokens < 4000, proposal.cost.prompt_tokens


def test_a_cut_off_answer_and_a_rambling_hypothesis_are_answered() -> None:
    ramble = {"hypothesis": "mae_" * 200, "patch": {"lr": 0.01}}
    script = [
        {**text('{"hypothesis": "the energy mae_mae_mae_mae'), "_finish": "length"},
        text(json.dumps(ramble)),
        text(json.dumps(GOOD)),
    ]
    with serve([MODEL], script) as server:
        agent = agent_for(
            server.url, tool_mode="json_schema", extra_body={"repetition_penalty": 1.1}
        )
        proposal = agent.propose(campaign_state())
    assert proposal.patch == GOOD["patch"]
    assert server.requests[0]["repetition_penalty"] == 1.1  # server-specific settings sent
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["hypothesis"]["maxLength"] == 400
    answers = [m["content"] for m in server.requests[2]["messages"] if m["role"] == "user"]
    assert answers[1].startswith("error: your answer was cut off at the token limit")
    assert "hypothesis is longer than 400 characters" in answers[2]


def code_state() -> CampaignState:
    from mlipilot.code_mode.program_files import PROGRAM, TEMPLATE, program_digest

    program = {PROGRAM: (TEMPLATE / PROGRAM).read_text()}
    return campaign_state(program=program, program_sha256=program_digest(program))


def test_code_mode_reads_the_program_and_proposes_a_diff_after_a_refused_one() -> None:
    from mlipilot.code_mode.diffs import unified_diff
    from mlipilot.code_mode.program_files import PROGRAM

    state = code_state()
    text = state.program[PROGRAM]
    loss = 'return job["energy_weight"] * energy + job["forces_weight"] * forces'
    good = unified_diff(PROGRAM, text, text.replace(loss, loss.replace("energy +", "energy * 2 +")))
    stale = good.replace("atoms_per_graph", "atoms_per_frame")  # context not in the file
    script = [
        calls(tool_call("read_program", {"path": PROGRAM}, "c1")),
        calls(tool_call("propose", {"hypothesis": "ema", "patch": {"ema": True}, "diff": ""})),
        calls(tool_call("propose", {"hypothesis": "stale", "patch": {}, "diff": stale}, "c3")),
        calls(tool_call("propose", {"hypothesis": "double energy", "patch": {}, "diff": good})),
    ]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url).propose(state)
    assert proposal.diff == good and proposal.patch == {}
    first = server.requests[0]
    assert {"read_program", "propose"} <= {t["function"]["name"] for t in first["tools"]}
    assert "Code mode" in first["messages"][0]["content"]
    answers = [m["content"] for m in server.requests[-1]["messages"] if m["role"] == "tool"]
    assert answers[0] == text  # the program as it is
    assert "no knob for ema" in answers[1]
    assert answers[2].startswith("error: proposal refused:") and "atoms_per_frame" in answers[2]


def test_recipe_mode_has_no_program_tool() -> None:
    script = [
        calls(tool_call("read_program", {"path": "training/program.py"}, "c1")),
        calls(tool_call("propose", GOOD, "c2")),
    ]
    with serve([MODEL], script) as server:
        agent_for(server.url).propose(campaign_state())
    assert "read_program" not in {t["function"]["name"] for t in server.requests[0]["tools"]}
    answer = next(m for m in server.requests[-1]["messages"] if m["role"] == "tool")
    assert "unknown tool 'read_program'" in answer["content"]


def test_a_proposal_asked_beside_others_is_told_how_many_and_its_rank() -> None:
    """Asked at once (asynchronous campaigns), proposals cannot see each other as pending:
    each is told how many others are being asked and which rank of idea it should give."""
    from mlipilot.agents.llm import state_view

    alone = state_view.overview(campaign_state())
    assert "being asked of you at this moment" not in alone
    second = state_view.overview(campaign_state(asked_alongside=1, slot=1))
    assert "1 other proposal is being asked of you at this moment" in second
    assert "this is number 2: propose your idea ranked 2 by promise" in second
    third = state_view.overview(campaign_state(asked_alongside=2, slot=2))
    assert "2 other proposals are being asked" in third and "this is number 3" in third
