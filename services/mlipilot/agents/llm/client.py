"""A small client for OpenAI-compatible chat completions (vLLM, llama.cpp, any such server).

HTTP through httpx: the two endpoints the agent needs (``GET /models`` and
``POST /chat/completions``), and retries with exponential backoff on 429 and 5xx (honouring
``Retry-After``), on a dropped connection and on a timeout. Every failure the user can fix
(server not there, model not served, bad key) is an ``MlipilotError`` naming the URL. Retries
are ours, not a library's, so each one is counted and reaches the ledger.

The server is not trusted until it has answered well, so what one request may cost is bounded:

- ``timeout_s`` is a total deadline per attempt (connect, headers and body together), not only
  the wait between two reads (httpx's timeouts): a server that drips a byte every few seconds is
  cut off when the time is up (its socket, handed over by httpx's ``trace`` extension, is shut
  down by a timer) and the attempt counts as a timeout.
- A reply body is read raw, in chunks, up to ``max_response_bytes`` (default 1 MiB); a longer
  one is refused there, unread past the cap and not retried (the same request would only cost
  as much again). Nothing is decompressed (``Accept-Encoding: identity``), so no small body can
  grow past the cap in memory. Error bodies are read up to 4 KiB, and at most 500 characters of
  them are quoted.
- Redirects are never followed: a 3xx is an error naming the host it points at, so the
  ``Authorization`` header (the API key) never goes anywhere but ``base_url``'s host.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from mlipilot.agents.base import AgentUnreachable
from mlipilot.errors import clipped

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 1 << 20  # a chat completion of thousands of tokens is tens of KiB
ERROR_BODY_BYTES = 4096  # an error body is only quoted (500 characters), never parsed
_CHUNK = 64 * 1024


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
    timeout_s: float = 120.0  # per attempt, everything included (see _Deadline)
    max_retries: int = 4
    backoff_s: float = 1.0  # first wait; doubled each retry, with jitter, capped below
    max_backoff_s: float = 30.0
    max_response_bytes: int = MAX_RESPONSE_BYTES
    _rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        # One client (its TLS context loaded once), but no keep-alive: every attempt opens its
        # own connection, so the trace hook in _attempt sees (and the deadline can shut) the
        # socket it runs on. follow_redirects=False is httpx's default, said here because the
        # API key depends on it.
        self._http = httpx.Client(
            timeout=self.timeout_s,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

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
                f"{clipped(str(served or 'no model'), 500)} (agent.model must be one of these)",
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
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last, down = "", False
        for attempt in range(1, self.max_retries + 2):
            down = False
            try:
                return _parsed(url, self._attempt(method, url, data, headers)), attempt
            except _Status as exc:
                if 300 <= exc.code < 400:
                    raise LlmServerError(
                        _redirected(url, exc), fields=("agent.base_url",)
                    ) from None
                last = f"HTTP {exc.code}: {clipped(exc.text, 500)}"
                if exc.code not in RETRY_STATUSES:
                    raise LlmServerError(_refused(url, exc.code, exc.text, self.model)) from None
                wait = _retry_after(exc.headers.get("Retry-After"))
            except _TooLarge:
                raise LlmServerError(
                    f"{url}: the reply is larger than agent.max_response_bytes "
                    f"({self.max_response_bytes} bytes); it was refused there, unread past the "
                    "cap, and not retried. Lower agent.max_completion_tokens, or raise "
                    "agent.max_response_bytes if this server is yours and its replies are that "
                    "long",
                    fields=("agent.max_response_bytes",),
                ) from None
            except _TimedOut:
                last = f"no complete answer within agent.timeout_s ({self.timeout_s:g} s)"
                wait = None
            except httpx.TransportError as exc:  # refused, reset, cut short
                down = isinstance(exc, httpx.ConnectError) and "refused" in str(exc).lower()
                last = clipped(f"{type(exc).__name__}: {exc}", 500)
                wait = None
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

    def _attempt(
        self, method: str, url: str, data: bytes | None, headers: dict[str, str]
    ) -> bytearray:
        """One HTTP exchange on a fresh connection under one deadline: the reply's body, or
        why there is none."""
        deadline = _Deadline(self.timeout_s)
        with deadline:
            try:
                with self._http.stream(
                    method,
                    url,
                    content=data,
                    headers=headers,
                    extensions={"trace": deadline.trace},
                ) as response:
                    if response.status_code >= 300:
                        text = _start_of(response.iter_raw(), ERROR_BODY_BYTES)
                        raise _Status(response.status_code, response.headers, text)
                    return self._body(response, deadline)
            except httpx.TransportError:
                if deadline.expired:  # the timer's shutdown, seen as a reset or a short body
                    raise _TimedOut from None
                raise

    def _body(self, response: httpx.Response, deadline: _Deadline) -> bytearray:
        """The reply's body, read in chunks and refused as soon as it passes the cap."""
        declared = response.headers.get("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > self.max_response_bytes:
            raise _TooLarge  # refused before a byte of it is read
        cap = self.max_response_bytes
        raw = bytearray()  # no copies: json.loads takes a bytearray as it is
        for chunk in response.iter_raw(_CHUNK):
            raw += chunk
            if len(raw) > cap:
                raise _TooLarge  # leaving the stream hangs up: nothing more is read
        if deadline.expired:  # the shutdown reads as an early end of the body
            raise _TimedOut
        return raw

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + self._rng.random() / 2)


class _TooLarge(Exception):
    """A reply body past ``max_response_bytes`` (turned into an ``LlmServerError``)."""


class _TimedOut(Exception):
    """The attempt's deadline passed (retried like any timeout)."""


class _Status(Exception):
    """An HTTP status other than 2xx, with the start of its body."""

    def __init__(self, code: int, headers: httpx.Headers, text: str) -> None:
        super().__init__(f"HTTP {code}")
        self.code, self.headers, self.text = code, headers, text


class _Deadline:
    """A total time limit for one attempt: when it passes, a timer shuts down the attempt's
    sockets, which wakes any read blocked on them (httpx's timeouts only bound the wait between
    two reads, so a server dripping one byte at a time would never hit them).

    httpx (httpcore) reports each new TCP connection to the request's ``trace`` extension; the
    socket is watched through a duplicate of its descriptor, so TLS wrapping changes nothing, and
    a descriptor number reused after the request can never be shut down by mistake."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __enter__(self) -> _Deadline:
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            sock.close()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's trace hook: watch the socket of every TCP connection the request opens
        (the proxy's, where there is one)."""
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            if isinstance(sock, socket.socket):
                self.watch(sock)

    def watch(self, sock: socket.socket) -> None:
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            if self.expired:
                _shut(dup)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by its owner
        sock.shutdown(socket.SHUT_RDWR)


def _start_of(chunks: Iterator[bytes], cap: int) -> str:
    """The start of an error body (at most ``cap`` bytes); what does not come is left unread
    (a body cut short, or the deadline: the status says enough)."""
    raw = bytearray()
    try:
        for chunk in chunks:
            raw += chunk
            if len(raw) >= cap:
                break
    except httpx.TransportError:
        pass
    return raw[:cap].decode(errors="replace")


def _parsed(url: str, raw: bytearray) -> Any:
    try:
        return json.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:  # bad JSON, a 5000-digit number, [[[[...
        raise LlmServerError(f"{url}: the answer is not JSON: {clipped(str(exc), 300)}") from None


def _redirected(url: str, exc: _Status) -> str:
    location = exc.headers.get("Location") or ""
    target = httpx.URL(url).join(location) if location else None
    host = target.netloc.decode() if target else "nowhere (no Location)"
    return (
        f"{url}: HTTP {exc.code}: the server redirects to {clipped(host, 200)}; redirects are "
        "not followed (the API key would go with them): set agent.base_url to the final "
        f"address ({clipped(str(target), 300) if target else 'the server gave none'})"
    )


def _retry_after(value: str | None) -> float | None:
    try:
        return min(60.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None


def _refused(url: str, code: int, text: str, model: str) -> str:
    """A non-retryable HTTP error as a message that says what to change."""
    hint = {
        401: "the server wants an API key: set agent.api_key_env to a variable that holds it",
        403: "the API key is not allowed here (agent.api_key_env)",
        404: f"no such endpoint or model {model!r} is not served (check agent.base_url, "
        "which usually ends in /v1, and agent.model)",
    }.get(code, "the server refused the request")
    return f"{url}: HTTP {code}: {hint}; server said: {clipped(text, 500)}"
