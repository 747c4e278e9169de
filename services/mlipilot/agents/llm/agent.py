"""An agent that asks a language model, over an OpenAI-compatible API, for each proposal.

One ``propose`` is one conversation: a system prompt (the rules), one user message with the
compact state, then turns until the model calls ``propose`` with a patch the recipe schema
accepts. With ``tool_mode: tools`` the model may first read more through tools (history, one
run's details, the recipe space); with ``tool_mode: json_schema`` (servers without tool
calling) it answers with one JSON object under structured output. A bad answer goes back to
the model with the reason; after ``max_tool_errors`` of them, or past the token limit, the
iteration fails (``AgentFailed``) and the campaign goes on. Every message to and from the
model, and the tokens of every call, ride on the answer (``AgentCost``) into the ledger.

What a model says is bounded before it costs anything: the client refuses a reply over
``max_response_bytes``; at most ``MAX_CALLS_PER_TURN`` tool calls of one turn are answered;
an assistant text is sent back to the model cut to ``ECHO_MAX_BYTES``. What the ledger keeps
of the conversation is bounded too, with the length and sha256 of each text it cut
(``transcript.ledger_transcript``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import string
import time
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import Field

from mlipilot.agents.base import AgentCost, AgentFailed, CampaignState, Proposal
from mlipilot.agents.llm import state_view
from mlipilot.agents.llm.client import ChatClient, LlmServerError
from mlipilot.agents.llm.tools import (
    PROPOSE,
    ToolAnswer,
    call_tool,
    check_proposal,
    levers_text,
    proposal_json_schema,
    tools_for,
)
from mlipilot.agents.llm.transcript import ledger_transcript, utf8, utf8_head
from mlipilot.config import LlmOptions
from mlipilot.errors import MlipilotError, clipped, shown

SYSTEM = """You are an expert in training MACE machine-learned interatomic potentials.
Each turn you propose ONE change (a patch) to the incumbent training recipe. The candidate is
trained under a fixed budget and judged by a fixed scorecard; it replaces the incumbent only if
the decision rule accepts it. Work from the numbers: fix the violated constraint with the
largest violation first, then lower the composite. Do not repeat a tried recipe. Change few
keys at a time so the result teaches something. Typical levers: output normalization
(e0s, scaling), loss weights, learning rate and schedule (EMA, stage two), capacity
(num_channels, max_L, correlation, num_interactions, r_max), batch size, precision."""

TOOLS_RULES = """Read more with the tools if you need it (get_run shows per-constraint margins
and MD outcomes of one tried candidate), then call propose(hypothesis, patch). Be brief."""

CODE_RULES = """Code mode: you may also edit the training program itself (a new loss term, a
schedule, a normalization): read it with read_program, then call propose(hypothesis, patch,
diff) with a unified diff of the editable files against the program as read (`--- a/PATH`,
`+++ b/PATH`, `@@` hunks with a few unchanged lines around each change), a patch of {} or the
recipe keys the program takes, or both. The program runs sandboxed and must still write its
model as it does now. A diff that does not apply comes back with the reason."""

JSON_RULES = """Answer with one JSON object and nothing else:
{"hypothesis": "<why this change should help>", "patch": {"<recipe key>": <value>, ...}}
Allowed recipe keys and values:
"""

NO_CALL = (
    "error: no tool call found. Call a tool; to finish, call propose with a hypothesis and a "
    'patch: {"name": "propose", "arguments": {"hypothesis": "<why>", "patch": {"<key>": <value>}}}'
)
_NO_PROPOSAL = (
    'error: no proposal found. Answer with one JSON object {"hypothesis": "...", "patch": {...}}.'
)
_CUT = "error: your answer was cut off at the token limit; answer briefly. "
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)
_ALNUM = string.ascii_letters + string.digits
_MISTRAL_ID = re.compile(r"^[A-Za-z0-9]{9}$")
_WIRE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")

# Bounds on what a model's answer may cost (see the module's docstring).
MAX_CALLS_PER_TURN = 8  # tool calls answered per turn; a model asks for one or two
ECHO_MAX_BYTES = 16 * 1024  # an assistant text as sent back to the model each turn
REPEAT_WARMING = 0.3  # added to the temperature for each refused call the model repeats
MAX_WARMED = 1.5  # ... up to this (a configured temperature above it is kept as it is)
_NAME_MAX = 64  # a tool name (OpenAI's limit) or a tool-call id; longer is no name or id


class LlmSettings(LlmOptions):
    """Everything the agent needs: the campaign's ``LlmOptions`` with the server's address, the
    key read from the environment, and the agent's seed."""

    base_url: str
    model: str
    api_key: str | None = Field(None, repr=False)
    backoff_s: float = 1.0  # before the first retry; doubles each time
    seed: int | None = None  # the agent's seed: each call sends one derived from it (sampling)

    @property
    def mistral_ids(self) -> bool:
        if self.tool_call_ids == "auto":
            return "mistral" in self.model.lower()
        return self.tool_call_ids == "mistral"


@dataclass
class _Conversation:
    """One ``propose``: the messages as sent, and what the calls cost."""

    model: str
    seed: int | None = None  # of this proposal's first call; the next calls count up from it
    messages: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)
    # calls answered with an error, as keys, with the first exchange that sent each
    refused: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    repeats: int = 0  # calls that repeated a refused one: each warms the sampling up

    def cost(self) -> AgentCost:
        return AgentCost(
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            requests=len(self.calls),
            duration_s=round(time.monotonic() - self.started, 3),
            transcript=ledger_transcript(self.messages),
            calls=list(self.calls),
        )


class LlmAgent:
    """``Agent`` over an OpenAI-compatible chat-completions server (vLLM, llama.cpp, ...)."""

    concurrent = True  # each proposal is a conversation of its own (agents.base)

    def __init__(self, settings: LlmSettings, client: ChatClient | None = None) -> None:
        self.settings = settings
        self.name = f"llm:{settings.model}"
        self.client = client or ChatClient(
            settings.base_url,
            settings.model,
            api_key=settings.api_key,
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
            backoff_s=settings.backoff_s,
            max_response_bytes=settings.max_response_bytes,
        )
        self._checked = False
        self._ids = itertools.count(1)  # thread-safe: concurrent proposals draw ids too

    def check_server(self) -> None:
        """A clear error now, unless the server is there and serves the model."""
        self.client.check_model()
        self._checked = True

    def propose(self, state: CampaignState) -> Proposal:
        if not self._checked:
            self.check_server()
        seed = self.settings.seed
        conv = _Conversation(self.settings.model, _call_seed(seed, state))
        try:
            if self.settings.tool_mode == "json_schema":
                proposal = self._converse_json(state, conv)
            else:
                proposal = self._converse_tools(state, conv)
        except LlmServerError as exc:
            exc.cost = conv.cost()  # the calls answered before the break spent tokens too
            raise
        return proposal.model_copy(update={"cost": conv.cost()})

    # -- tool calling

    def _converse_tools(self, state: CampaignState, conv: _Conversation) -> Proposal:
        conv.messages += [
            {"role": "system", "content": _system(state)},
            {"role": "user", "content": _first_message(state)},
        ]
        for _ in range(self.settings.max_turns):
            tools = tools_for(state)
            message = self._call(conv, {"tools": tools, "tool_choice": self._tool_choice()})
            raw_calls = message.get("tool_calls") or []
            raw_calls = raw_calls if isinstance(raw_calls, list) else []
            assistant = _assistant(message, [])
            if not raw_calls and (raw_calls := _call_in_text(message.get("content"))):
                # sent back as the tool call it meant; the text as written stays in the ledger
                assistant = {**assistant, "content": "", "text": message.get("content")}
            calls = [self._normalized_call(c) for c in raw_calls[:MAX_CALLS_PER_TURN]]
            if len(raw_calls) > len(calls):  # not answered, not sent back; the ledger says so
                assistant["tool_calls_dropped"] = len(raw_calls) - len(calls)
            if not calls:
                conv.messages.append(assistant)
                self._refuse(conv, {"role": "user", "content": NO_CALL})
                continue
            turn = {**assistant, "tool_calls": calls}
            conv.messages.append(turn)
            for call in calls:
                fn = call["function"]
                answer = call_tool(state, fn["name"], fn["arguments"])
                reply = {
                    "role": "tool",
                    "tool_call_id": call["id"],
                    "name": fn["name"],
                    "content": answer.content,
                }
                if answer.error:
                    answer = self._unless_repeated(conv, state, fn, answer, [turn, reply])
                    reply["content"] = answer.content
                conv.messages.append(reply)
                if answer.proposal is not None:
                    return answer.proposal
                if answer.error:
                    self._count_error(conv, answer.content)
        raise self._failed(conv, f"no valid proposal in {self.settings.max_turns} turns")

    def _unless_repeated(
        self,
        conv: _Conversation,
        state: CampaignState,
        fn: dict[str, Any],
        answer: Any,
        exchange: list[dict[str, Any]],
    ) -> Any:
        """A refused call sent again: said so, with levers not pulled yet and their ranges,
        the next calls sample warmer, and the earlier copy of the exchange leaves the context
        (the ledger keeps it). Seen with Qwen2.5-Coder-1.5B: it sent one refused patch three
        times over, each copy in its context making the next more likely, at 9k tokens."""
        key = f"{fn['name']}\n{_canonical(fn['name'], fn['arguments'])}"
        earlier = conv.refused.get(key)
        conv.refused[key] = exchange if len(exchange[0]["tool_calls"]) == 1 else []
        if earlier is None:
            return answer
        for message in earlier:  # one copy of a refused call is enough for the model
            message["hidden"] = True
        conv.repeats += 1
        again = "error: you sent this same call before and it was refused; change it. "
        return replace(
            answer,
            content=f"{again}{answer.content.removeprefix('error: ')}. Also "
            + levers_text(state, conv.repeats),
        )

    def _tool_choice(self) -> Any:
        if self.settings.tool_choice == "propose":
            return {"type": "function", "function": {"name": PROPOSE}}
        return self.settings.tool_choice

    def _normalized_call(self, call: Any) -> dict[str, Any]:
        """The call as it goes back to the server: an id it accepts, arguments as a string."""
        fn = call.get("function") if isinstance(call, dict) else None
        fn = fn if isinstance(fn, dict) else {}
        arguments = fn.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments) if arguments is not None else ""
        # a name or id of a megabyte would be echoed in every answer and every later request
        name = str(fn.get("name") or "")[:_NAME_MAX]
        call_id = str(call.get("id") or "") if isinstance(call, dict) else ""
        if len(call_id) > _NAME_MAX:
            call_id = ""
        if self.settings.mistral_ids and not _MISTRAL_ID.match(call_id):
            call_id = self._mistral_id(call_id)
        elif not call_id:
            call_id = f"call_{self._mistral_id('')}"
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }

    def _mistral_id(self, seed: str) -> str:
        """9 letters and digits, as Mistral's chat template demands."""
        digest = hashlib.sha256(f"{seed}/{next(self._ids)}".encode()).digest()
        return "".join(_ALNUM[b % len(_ALNUM)] for b in digest[:9])

    # -- structured output

    def _converse_json(self, state: CampaignState, conv: _Conversation) -> Proposal:
        rules = JSON_RULES + state_view.recipe_space_text()
        if state.program is not None:  # the program, and how to answer with a diff of it
            files = "\n\n".join(f"--- {p} ---\n{t}" for p, t in sorted(state.program.items()))
            rules += f'\n\n{CODE_RULES}\nAdd a "diff" key ("" for none).\n\n{files}'
        conv.messages += [
            {"role": "system", "content": f"{SYSTEM}\n\n{rules}"},
            {"role": "user", "content": state_view.overview(state)},
        ]
        response_format = {
            "type": "json_schema",
            "json_schema": {
                "name": "proposal",
                "schema": proposal_json_schema(code_mode=state.program is not None),
            },
        }
        for _ in range(self.settings.max_turns):
            message = self._call(conv, {"response_format": response_format})
            conv.messages.append(_assistant(message, []))
            answer = _proposal_in_text(state, message.get("content"))
            if answer.proposal is not None:
                return answer.proposal
            reason = answer.content
            if conv.calls[-1]["finish_reason"] == "length":
                reason = _CUT + reason
            self._refuse(conv, {"role": "user", "content": reason})
        raise self._failed(conv, f"no valid proposal in {self.settings.max_turns} turns")

    # -- shared

    def _call(self, conv: _Conversation, extra: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        spent = conv.prompt_tokens + conv.completion_tokens
        if spent >= s.max_tokens_per_iteration:
            raise self._failed(
                conv, f"token limit of {s.max_tokens_per_iteration} per iteration reached ({spent})"
            )
        payload: dict[str, Any] = {
            "messages": [_wire(m) for m in conv.messages if not m.get("hidden")],
            "temperature": _warmed(s.temperature, conv.repeats),
            "max_tokens": min(s.max_completion_tokens, s.max_tokens_per_iteration - spent),
            **extra,
        }
        if conv.seed is not None:  # a campaign's seed repeats its sampling (same server)
            payload["seed"] = (conv.seed + len(conv.calls)) % 2**31
        if s.thinking is not None:
            payload["chat_template_kwargs"] = {"enable_thinking": s.thinking}
        payload.update(s.extra_body)  # server-specific sampling settings
        reply = self.client.chat(payload)
        usage = reply.body.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        prompt, completion = (
            _count(usage.get("prompt_tokens")),
            _count(usage.get("completion_tokens")),
        )
        conv.prompt_tokens += prompt
        conv.completion_tokens += completion
        choices = reply.body["choices"]
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        finish = choice.get("finish_reason")
        conv.calls.append(
            {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "usage_reported": bool(usage),
                "seconds": round(reply.seconds, 3),
                "http_attempts": reply.attempts,
                "finish_reason": None if finish is None else clipped(str(finish), 64),
                "messages_sent": len(payload["messages"]),
                # what else was sent: sampling settings, tool choice, structured-output format
                "params": {k: v for k, v in payload.items() if k not in ("messages", "tools")},
                "tools": [t["function"]["name"] for t in payload.get("tools", [])],
            }
        )
        message = choice.get("message")
        if not isinstance(message, dict):
            raise MlipilotError(
                f"{self.client.base_url}: a choice without a message: {shown(choice)}"
            )
        return message

    def _refuse(self, conv: _Conversation, message: dict[str, Any]) -> None:
        conv.messages.append(message)
        self._count_error(conv, message["content"])

    def _count_error(self, conv: _Conversation, reason: str) -> None:
        conv.errors += 1
        if conv.errors > self.settings.max_tool_errors:
            raise self._failed(
                conv,
                f"{conv.errors} bad answers (limit {self.settings.max_tool_errors}); "
                f"last: {reason}",
            )

    def _failed(self, conv: _Conversation, reason: str) -> AgentFailed:
        return AgentFailed(f"{self.name}: {reason}", cost=conv.cost())


def _call_seed(seed: int | None, state: CampaignState) -> int | None:
    """The sampling seed of an iteration's first call: one per agent seed, iteration,
    candidate of the iteration (parallel campaigns propose several) and refusal before it (a
    retried proposal must not sample the refused answer again)."""
    if seed is None:
        return None
    key = f"{seed}/{state.iteration}/{state.slot}/{state.last_error or ''}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") % 2**31


def _system(state: CampaignState) -> str:
    rules = f"{SYSTEM}\n\n{TOOLS_RULES}"
    if state.program is not None:
        rules += "\n\n" + CODE_RULES + f"\nEditable files: {', '.join(sorted(state.program))}."
    return rules


def _first_message(state: CampaignState) -> str:
    return (
        state_view.overview(state)
        + "\n\nRecipe keys (allowed values):\n"
        + (state_view.recipe_space_text())
    )


def _assistant(message: dict[str, Any], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The model's turn as it is sent back: content "" rather than null (vLLM's chat templates
    and Mistral's refuse null), tool calls normalized; its reasoning kept for the ledger."""
    out: dict[str, Any] = {"role": "assistant", "content": _text(message.get("content"))}
    if calls:
        out["tool_calls"] = calls
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        out["reasoning"] = _text(reasoning)  # recorded, never sent back
    return out


def _warmed(temperature: float, repeats: int) -> float:
    if not repeats:
        return temperature
    return max(temperature, min(temperature + REPEAT_WARMING * repeats, MAX_WARMED))


def _canonical(name: str, arguments: Any) -> str:
    """Arguments compared as data: other spacing, key order or 1000 for 1000.0 is the same
    call, and a proposal is its patch (Qwen re-sent refused patches with a reworded
    hypothesis and integers for floats)."""
    try:
        value = json.loads(arguments, parse_int=float) if isinstance(arguments, str) else arguments
        if name == PROPOSE and isinstance(value, dict) and "patch" in value:
            value = value["patch"]
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return str(arguments)


def _text(value: Any) -> str:
    """A message's text as a string (a server may send null, a list of parts, anything)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _count(value: Any) -> int:
    """A token count as the server reported it; anything but a number >= 0 counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value) if 0 <= value < 1e15 else 0  # also refuses nan and inf


def _wire(message: dict[str, Any]) -> dict[str, Any]:
    """The message as the server gets it: no ledger-only keys, and an assistant's text cut
    to ``ECHO_MAX_BYTES`` (the model needs the gist of what it said, not a megabyte of it
    again every turn; tool-call arguments go back whole, as chat templates parse them)."""
    out = {k: v for k, v in message.items() if k in _WIRE_KEYS}
    content = out.get("content")
    if out.get("role") == "assistant" and isinstance(content, str):
        size = len(utf8(content))
        if size > ECHO_MAX_BYTES:
            head = utf8_head(content, ECHO_MAX_BYTES)
            out["content"] = f"{head}\n[... {size - len(utf8(head))} more bytes not repeated]"
    return out


def _proposal_in_text(state: CampaignState, content: Any) -> ToolAnswer:
    """The proposal of a structured-output answer, else the reason there is none."""
    obj = _json_object(content)
    if obj is None:
        return ToolAnswer(_NO_PROPOSAL, error=True)
    return check_proposal(state, obj)


def _call_in_text(content: Any) -> list[dict[str, Any]]:
    """A tool call written as text, which the server's tool parser missed (small models,
    chat templates without tools): ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``,
    or a bare proposal ``{"hypothesis": ..., "patch": ...}``."""
    obj = _json_object(content)
    if obj is None:
        return []
    if isinstance(obj.get("name"), str) and "arguments" in obj:
        return [{"function": {"name": obj["name"], "arguments": obj["arguments"]}}]
    if "patch" in obj or "hypothesis" in obj:
        return [{"function": {"name": PROPOSE, "arguments": obj}}]
    return []


def _json_object(content: Any) -> dict[str, Any] | None:
    """The first JSON object in the text (bare, in a ``` fence or in <tool_call> tags),
    after any <think> block."""
    if not isinstance(content, str):
        return None
    text = _THINKING.sub("", content)
    start = text.find("{")
    while start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        return value if isinstance(value, dict) else None
    return None


def api_key_from_env(variable: str | None) -> str | None:
    """The API key held in ``variable``; a clear error when it is named but not set."""
    if not variable:
        return None
    value = os.environ.get(variable)
    if not value:
        raise MlipilotError(
            f"agent.api_key_env: environment variable {variable} is not set (or empty)",
            fields=("agent.api_key_env",),
        )
    return value
