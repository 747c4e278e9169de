"""A small client for OpenAI-compatible chat completions (vLLM, llama.cpp, any such server).

Plain HTTP on the standard library: the two endpoints the agent needs (``GET /models`` and
``POST /chat/completions``), a timeout per request, and retries with exponential backoff on
429 and 5xx (honouring ``Retry-After``) and on a dropped connection. Every failure the user
can fix (server not there, model not served, bad key) is an ``MlipilotError`` naming the URL.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from mlipilot.agents.base import AgentUnreachable
from mlipilot.errors import clipped

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class LlmServerError(AgentUnreachable):
    """The model server could not give an answer (after retries, where retrying made sense)."""


@dataclass
class Reply:
    """One chat completion as the server sent it, with what getting it took."""

    body: dict[str, Any]
    attempts: int
    seconds: float


@dataclass
class ChatClient:
    base_url: str  # e.g. http://vllm:8000/v1
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 1.0  # first wait; doubled each retry, with jitter, capped below
    max_backoff_s: float = 30.0
    _rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    def served_models(self) -> list[str]:
        """The model ids the server lists under ``/models``."""
        body, _ = self._request("GET", "/models", None)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise LlmServerError(
                f"{self.base_url}/models: not an OpenAI-compatible model list: "
                f"{clipped(str(body), 300)}"
            )
        return [str(m.get("id")) for m in data if isinstance(m, dict)]

    def check_model(self) -> None:
        """Raise a clear error unless the server is there and serves ``self.model``."""
        served = self.served_models()
        if self.model not in served:
            raise LlmServerError(
                f"{self.base_url}: model {self.model!r} is not served there; it serves "
                f"{served or 'no model'} (agent.model must be one of these)",
                fields=("agent.model",),
            )

    def chat(self, payload: dict[str, Any]) -> Reply:
        start = time.monotonic()
        body, attempts = self._request(
            "POST", "/chat/completions", {"model": self.model, **payload}
        )
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise LlmServerError(
                f"{self.base_url}/chat/completions: no choices in the answer: "
                f"{clipped(json.dumps(body), 500)}"
            )
        return Reply(body, attempts, time.monotonic() - start)

    def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> tuple[Any, int]:
        url = self.base_url + path
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last, down = "", False
        for attempt in range(1, self.max_retries + 2):
            down = False
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read() or b"null"), attempt
            except urllib.error.HTTPError as exc:
                text = exc.read().decode(errors="replace") if exc.fp else ""
                last = f"HTTP {exc.code}: {clipped(text, 500)}"
                if exc.code not in RETRY_STATUSES:
                    raise LlmServerError(_refused(url, exc.code, text, self.model)) from exc
                wait = _retry_after(exc.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                down = _refused_connection(reason)
                last = f"{type(exc).__name__}: {reason}"
                wait = None
            except json.JSONDecodeError as exc:
                raise LlmServerError(f"{url}: the answer is not JSON: {exc}") from exc
            if attempt > self.max_retries:
                break
            time.sleep(
                min(wait, self.max_backoff_s) if wait is not None else self._backoff(attempt)
            )
        if down:
            raise LlmServerError(
                f"{url}: no server answers there ({last}, {self.max_retries + 1} attempts); "
                "start the model server or set agent.base_url",
                fields=("agent.base_url",),
            )
        raise LlmServerError(
            f"{url}: no answer after {self.max_retries + 1} attempts; last: {last}"
        )

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + self._rng.random() / 2)


def _retry_after(value: str | None) -> float | None:
    try:
        return min(60.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None


def _refused_connection(reason: object) -> bool:
    return isinstance(reason, ConnectionRefusedError) or "refused" in str(reason).lower()


def _refused(url: str, code: int, text: str, model: str) -> str:
    """A non-retryable HTTP error as a message that says what to change."""
    hint = {
        401: "the server wants an API key: set agent.api_key_env to a variable that holds it",
        403: "the API key is not allowed here (agent.api_key_env)",
        404: f"no such endpoint or model {model!r} is not served (check agent.base_url, "
        "which usually ends in /v1, and agent.model)",
    }.get(code, "the server refused the request")
    return f"{url}: HTTP {code}: {hint}; server said: {clipped(text, 500)}"
