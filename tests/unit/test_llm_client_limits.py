"""What a hostile model server can cost the campaign, tried for real on loopback.

Each test plays one attack through the scripted server (``tests/llm_server.py``: real HTTP,
raw bytes where the attack needs them) and checks it is refused, bounded or recorded as it
should be: an oversized or endless reply, a huge error body, a slow drip, a redirect that
would carry the API key to another host, a reply the ledger must not keep whole.
"""

from __future__ import annotations

import hashlib
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from llm_server import Raw, calls, raw_reply, serve, text, tool_call
from pydantic import ValidationError
from test_llm_agent import GOOD, MODEL, agent_for, campaign_state

from mlipilot.agents.llm import LlmServerError
from mlipilot.agents.llm.agent import ECHO_MAX_BYTES, MAX_CALLS_PER_TURN
from mlipilot.agents.llm.client import MAX_RESPONSE_BYTES, ChatClient
from mlipilot.agents.llm.transcript import (
    LEDGER_TEXT_MAX_BYTES,
    LEDGER_TEXTS_MAX_BYTES,
    ledger_transcript,
)
from mlipilot.config import AgentConfig

MiB = 1 << 20
KEY = "sk-hostile-test-0123"


def completion(content: str, **extra: Any) -> dict[str, Any]:
    """A chat completion as vLLM sends it."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        **extra,
    }


# Built once, before any memory is traced: the server sends these without copying them.
BIG = json.dumps(completion("x" * (2 * MiB))).encode()  # a valid answer of 2 MB
FILLER = b"x" * (64 * 1024)


def client_for(url: str, **settings: Any) -> ChatClient:
    return ChatClient(url, MODEL, **{"backoff_s": 0.01, "max_retries": 2, **settings})


def peak_bytes(call: Callable[[], Any]) -> tuple[int, BaseException | None]:
    """The most memory Python held while ``call`` ran (the server thread's included), and
    what it raised."""
    tracemalloc.start()
    try:
        call()
        raised = None
    except Exception as exc:
        raised = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, raised


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.02)
    return condition()


# -- the size of a reply


@pytest.mark.parametrize("length", ["declared", "undeclared"])
def test_a_reply_of_2_mb_is_refused_without_holding_it(length: str) -> None:
    """Declared: refused on its Content-Length, before a byte of the body is read.
    Undeclared (the body ends when the connection does): read up to the cap, then refused."""
    headers = {} if length == "declared" else {"Content-Length": ""}
    with serve([MODEL], [Raw(raw_reply(200, BIG, headers))]) as server:
        client = client_for(server.url)
        peak, raised = peak_bytes(lambda: client.chat({"messages": []}))
    assert isinstance(raised, LlmServerError), raised
    message = str(raised)
    assert f"{server.url}/chat/completions" in message
    assert f"agent.max_response_bytes ({MAX_RESPONSE_BYTES} bytes)" in message
    assert "refused" in message and "not retried" in message
    assert raised.fields == ("agent.max_response_bytes",)
    assert len(server.requests) == 1  # the same request would only cost as much again
    # The old client held the 2 MB body and the 2 MB string parsed from it (> 4 MiB).
    assert peak < (256 * 1024 if length == "declared" else 2 * MiB), peak


def test_an_endless_body_is_cut_off_at_the_cap() -> None:
    """The server would stream 256 MiB of a JSON string that never ends: the client stops
    reading past the cap and hangs up, so the server's writes fail soon after."""

    def endless() -> Iterator[bytes]:
        yield from raw_reply(200, b'{"choices": [], "pad": "', {"Content-Length": ""})
        for _ in range(4096):
            yield FILLER

    with serve([MODEL], [Raw(endless())]) as server:
        client = client_for(server.url, max_retries=0)
        peak, raised = peak_bytes(lambda: client.chat({"messages": []}))
        assert wait_for(lambda: server.hung_up)
    assert isinstance(raised, LlmServerError) and "refused" in str(raised), raised
    assert peak < 2 * MiB, peak
    # What the server got written: the cap, plus what the kernel's buffers took in.
    assert server.written < 64 * MiB, server.written


def test_a_huge_error_body_is_read_only_as_far_as_it_is_quoted() -> None:
    with serve([MODEL], [Raw(raw_reply(500, b"E" * (4 * MiB)))]) as server:
        client = client_for(server.url, max_retries=0)
        peak, raised = peak_bytes(lambda: client.chat({"messages": []}))
    assert isinstance(raised, LlmServerError), raised
    assert "no answer after 1 attempts; last: HTTP 500: EEE" in str(raised)
    assert len(str(raised)) < 1000
    # At most a network read or two (httpcore reads 64 KiB at a time and its buffers hold a
    # read a few times over), never the 4 MiB: the first client read all of it.
    assert peak < 512 * 1024, peak


def test_json_nested_past_the_recursion_limit_is_a_clear_error() -> None:
    with (
        serve([MODEL], [Raw(raw_reply(200, b"[" * 100_000))]) as server,
        pytest.raises(LlmServerError, match="the answer is not JSON"),
    ):
        client_for(server.url).chat({"messages": []})


# -- time


def drip(reply: list[bytes], start: int) -> list[bytes]:
    """The reply's bytes from ``start`` on, one at a time."""
    whole = b"".join(reply)
    return [whole[:start], *(whole[i : i + 1] for i in range(start, len(whole)))]


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_slow_drip_hits_the_deadline_of_each_attempt(where: str) -> None:
    """A byte every 0.1 s never trips a socket timeout of 0.5 s; the total deadline of each
    attempt (0.5 s) stops it. The old client would have taken ~25 s, then used the answer."""
    reply = raw_reply(200, json.dumps(completion("slow")).encode())
    start = len(reply[0]) if where == "body" else len("HTTP/1.1 200 X\r\n")
    script = [Raw(drip(reply, start), pause_s=0.1) for _ in range(2)]
    with serve([MODEL], script) as server:
        client = client_for(server.url, timeout_s=0.5, max_retries=1)
        began = time.monotonic()
        with pytest.raises(LlmServerError) as info:
            client.chat({"messages": []})
        took = time.monotonic() - began
    message = str(info.value)
    assert "no answer after 2 attempts" in message
    assert "no complete answer within agent.timeout_s (0.5 s)" in message
    assert len(server.requests) == 2 and took < 3.0, took


# -- redirects


@pytest.mark.parametrize(
    ("status", "ask"),
    [
        (307, lambda c: c.check_model()),  # GET /models, as the agent's first call
        (302, lambda c: c.chat({"messages": []})),  # urllib turned this POST into a GET
    ],
)
def test_a_redirect_is_not_followed_and_the_key_stays_home(
    status: int, ask: Callable[[ChatClient], Any]
) -> None:
    with serve([MODEL]) as elsewhere, serve([MODEL], redirect_to=elsewhere.url) as server:
        server.redirect_status = status
        client = client_for(server.url, api_key=KEY)
        with pytest.raises(LlmServerError) as info:
            ask(client)
    # The key went where base_url points, and nowhere else: nothing reached the other host.
    assert server.seen[0][2]["Authorization"] == f"Bearer {KEY}"
    assert elsewhere.seen == [], elsewhere.seen
    message = str(info.value)
    other = elsewhere.url.removeprefix("http://").removesuffix("/v1")
    assert f"HTTP {status}: the server redirects to {other}" in message
    assert server.url in message and "set agent.base_url to the final address" in message
    assert info.value.fields == ("agent.base_url",)
    assert len(server.seen) == 1  # not retried


# -- what the conversation and the ledger keep


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_200_kb_answer_is_kept_bounded_with_its_hash_and_length() -> None:
    ramble = "".join(f"I think step {i} matters. " for i in range(8000))[:200_000]
    script = [{**text(ramble), "_usage": (1000, 2000)}, calls(tool_call("propose", GOOD))]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url).propose(campaign_state())
    assert proposal.cost is not None
    detail = proposal.cost.model_dump()  # the agent_call row's detail, as the loop writes it
    kept = detail["transcript"][2]
    assert kept["role"] == "assistant"
    assert len(kept["content"].encode()) <= LEDGER_TEXT_MAX_BYTES
    assert ramble.startswith(kept["content"])
    assert kept["cut"] == {
        "content": {"chars": 200_000, "bytes": 200_000, "sha256": sha256(ramble)}
    }
    # The rest of the row as it was: small messages whole and without a cut entry.
    assert "cut" not in detail["transcript"][3] and detail["transcript"][3]["role"] == "user"
    assert len(json.dumps(detail, sort_keys=True)) < 64 * 1024
    # Sent back to the model: its head and a note, not 200 kB again every turn.
    echoed = server.requests[1]["messages"][2]["content"]
    assert echoed.startswith(kept["content"][:1000]) and echoed.endswith("not repeated]")
    assert len(echoed.encode()) < ECHO_MAX_BYTES + 100


def test_a_row_of_many_large_texts_stays_under_its_total() -> None:
    """Four turns of four tool calls, each with 150 kB of arguments: each text is cut to
    16 KiB, and together they are cut further so the row's texts stay under 256 KiB."""
    pad = "".join(f"{i:08d}" for i in range(150_000 // 8))

    def turn(n: int) -> dict[str, Any]:
        items = [
            tool_call("get_history", {"pad": pad, "n": n, "i": i}, f"c{n}{i}") for i in range(4)
        ]
        return {**calls(*items), "_usage": (100, 100)}

    script = [*(turn(n) for n in range(4)), calls(tool_call("propose", GOOD, "last"))]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url).propose(campaign_state())
    assert proposal.cost is not None and len(server.requests) == 5
    transcript = proposal.cost.transcript
    texts = [len(t.encode()) for m in transcript for t in strings(m)]
    assert sum(texts) <= LEDGER_TEXTS_MAX_BYTES
    assert len(json.dumps(transcript)) < LEDGER_TEXTS_MAX_BYTES + 32 * 1024
    cuts = [c for m in transcript for c in m.get("cut", {}).values()]
    assert len(cuts) == 16 and all(c["bytes"] > 150_000 for c in cuts)
    first = transcript[2]
    args = first["tool_calls"][0]["function"]["arguments"]
    full = json.dumps({"pad": pad, "n": 0, "i": 0})
    assert full.startswith(args) and len(args) < LEDGER_TEXT_MAX_BYTES
    assert first["cut"]["tool_calls[0].function.arguments"]["sha256"] == sha256(full)
    # The tool answers (short, ours) are whole.
    assert all("cut" not in m for m in transcript if m["role"] == "tool")


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() if k != "cut" for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def test_ledger_transcript_leaves_a_small_conversation_as_it_is() -> None:
    messages = [
        {"role": "system", "content": "rules"},
        {"role": "assistant", "content": "", "tool_calls": [tool_call("get_history", {})]},
    ]
    assert ledger_transcript(messages) == messages
    # Cut by bytes of UTF-8, whole characters kept; a lone surrogate (valid JSON) is no crash.
    odd = {"role": "assistant", "content": "é" * 20_000 + "\ud800"}
    [kept] = ledger_transcript([odd])
    assert len(kept["content"].encode()) <= LEDGER_TEXT_MAX_BYTES and set(kept["content"]) == {"é"}
    assert kept["cut"]["content"]["chars"] == 20_001


def test_a_turn_of_many_tool_calls_is_answered_only_in_part() -> None:
    """A reply can hold thousands of tool calls in 1 MiB; each answered one would be a tool
    message sent back every later turn. Only the first few are answered; the ledger counts
    the rest. A tool name of 100 kB comes back clipped, not echoed."""
    many = [tool_call("get_scorecard", {}, f"c{i}") for i in range(50)]
    many[0] = tool_call("x" * 100_000, {}, "c0")
    script = [calls(*many), calls(tool_call("propose", GOOD, "p"))]
    with serve([MODEL], script) as server:
        proposal = agent_for(server.url).propose(campaign_state())
    sent = server.requests[1]["messages"]
    assert sum(1 for m in sent if m["role"] == "tool") == MAX_CALLS_PER_TURN
    assert len(sent[2]["tool_calls"]) == MAX_CALLS_PER_TURN
    assert len(json.dumps(sent)) < 64 * 1024
    assert proposal.cost is not None
    assert proposal.cost.transcript[2]["tool_calls_dropped"] == 50 - MAX_CALLS_PER_TURN


def test_nonsense_usage_and_finish_reason_are_no_crash() -> None:
    body = completion("")
    body["choices"][0]["message"] = calls(tool_call("propose", GOOD))
    body["choices"][0]["finish_reason"] = "z" * 100_000
    body["usage"] = {"prompt_tokens": "lots", "completion_tokens": -5}
    with serve([MODEL], [Raw(raw_reply(200, json.dumps(body).encode()))]) as server:
        proposal = agent_for(server.url).propose(campaign_state())
    assert proposal.cost is not None
    assert (proposal.cost.prompt_tokens, proposal.cost.completion_tokens) == (0, 0)
    assert len(proposal.cost.calls[0]["finish_reason"]) <= 64


def test_the_cap_is_a_setting_of_the_agent() -> None:
    """``max_response_bytes`` reaches the client: a 100 kB answer passes the default cap and
    is refused under a cap of 64 KiB; the campaign file refuses a cap out of its range."""
    answer = calls(tool_call("propose", {**GOOD, "hypothesis": "h" * 100}), content="y" * 100_000)
    with serve([MODEL], [answer, answer]) as server:
        assert agent_for(server.url).propose(campaign_state()).patch == GOOD["patch"]
        with pytest.raises(LlmServerError, match=r"max_response_bytes \(65536 bytes\)"):
            agent_for(server.url, max_response_bytes=64 * 1024).propose(campaign_state())
    base = {"kind": "llm", "base_url": "http://vllm:8000/v1", "model": MODEL}
    assert AgentConfig(**base).max_response_bytes == MAX_RESPONSE_BYTES
    with pytest.raises(ValidationError, match="max_response_bytes"):
        AgentConfig(**base, max_response_bytes=1000)
