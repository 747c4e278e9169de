"""A small client for OpenAI-compatible chat completions (vLLM, llama.cpp, any such server).

Plain HTTP on the standard library: the two endpoints the agent needs (``GET /models`` and
``POST /chat/completions``), and retries with exponential backoff on 429 and 5xx (honouring
``Retry-After``), on a dropped connection and on a timeout. Every failure the user can fix
(server not there, model not served, bad key) is an ``MlipilotError`` naming the URL.

The server is not trusted until it has answered well, so what one request may cost is bounded:

- ``timeout_s`` is a total deadline per attempt (connect, headers and body together), not only
  the socket's wait between two reads: a server that drips a byte every few seconds is cut off
  when the time is up (its sockets are shut down by a timer) and the attempt counts as a timeout.
- A reply body is read in chunks up to ``max_response_bytes`` (default 1 MiB); a longer one is
  refused there, unread past the cap and not retried (the same request would only cost as much
  again). Error bodies are read up to 4 KiB, and at most 500 characters of them are quoted.
- Redirects are never followed: a 3xx is an error naming the host it points at, so the
  ``Authorization`` header (the API key) never goes anywhere but ``base_url``'s host.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

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
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last, down = "", False
        for attempt in range(1, self.max_retries + 2):
            down = False
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                return _parsed(url, self._attempt(request)), attempt
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
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, cut short
                reason = getattr(exc, "reason", exc)
                down = _refused_connection(reason)
                last = clipped(f"{type(exc).__name__}: {reason}", 500)
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

    def _attempt(self, request: urllib.request.Request) -> bytearray:
        """One HTTP exchange under one deadline: the reply's body, or why there is none."""
        deadline = _Deadline(self.timeout_s)
        with deadline:
            try:
                with _opener(deadline).open(request, timeout=self.timeout_s) as response:
                    return self._body(response, deadline)
            except urllib.error.HTTPError as exc:  # its body is read under the same deadline
                raise _Status(exc.code, exc.headers, _error_text(exc)) from None
            except (OSError, http.client.HTTPException):
                if deadline.expired:  # the timer's shutdown, seen as a reset or a short body
                    raise _TimedOut from None
                raise

    def _body(self, response: Any, deadline: _Deadline) -> bytearray:
        """The reply's body, read in chunks and refused as soon as it passes the cap."""
        declared = response.headers.get("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > self.max_response_bytes:
            raise _TooLarge  # refused before a byte of it is read
        raw, more = _read_upto(response, self.max_response_bytes)
        if more:
            raise _TooLarge
        if deadline.expired:  # the shutdown reads as an early end of the body
            raise _TimedOut
        if getattr(response, "length", None):  # fewer bytes than Content-Length promised
            raise http.client.IncompleteRead(raw, response.length)
        return raw

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + self._rng.random() / 2)


class _TooLarge(Exception):
    """A reply body past ``max_response_bytes`` (turned into an ``LlmServerError``)."""


class _TimedOut(Exception):
    """The attempt's deadline passed (retried like any timeout)."""


class _Status(Exception):
    """An HTTP error status, with the start of its body."""

    def __init__(self, code: int, headers: Any, text: str) -> None:
        super().__init__(f"HTTP {code}")
        self.code, self.headers, self.text = code, headers, text


class _Deadline:
    """A total time limit for one attempt: when it passes, a timer shuts down the attempt's
    sockets, which wakes any read blocked on them (a socket timeout alone only bounds the wait
    between two reads, so a server dripping one byte at a time would never hit it).

    The sockets are watched through duplicates of their descriptors, so TLS wrapping (which
    detaches the original socket object) changes nothing, and a descriptor number reused after
    the request can never be shut down by mistake."""

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


class _WatchedConnection:
    """An ``http.client`` connection whose socket its ``_Deadline`` can shut down."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        create = self._create_connection

        # http.client makes the TCP connection through this attribute (before any TLS
        # handshake or proxy tunnel), so the deadline covers everything after it too.
        def create_and_watch(*a: Any, **k: Any) -> socket.socket:
            sock = create(*a, **k)
            deadline.watch(sock)
            return sock

        self._create_connection = create_and_watch


class _WatchedHTTP(_WatchedConnection, http.client.HTTPConnection):
    pass


class _WatchedHTTPS(_WatchedConnection, http.client.HTTPSConnection):
    pass


_WATCHED: dict[type, type] = {
    http.client.HTTPConnection: _WatchedHTTP,
    http.client.HTTPSConnection: _WatchedHTTPS,
}


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        watched = functools.partial(_WATCHED[http_class], deadline=self.deadline)
        return super().do_open(watched, req, **kwargs)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()  # the default context: certificates and host names are checked
        self.deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        watched = functools.partial(_WATCHED[http_class], deadline=self.deadline)
        return super().do_open(watched, req, **kwargs)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow: urllib would send the request, ``Authorization`` included, to whatever
    host a 3xx names. The 3xx comes back as an ``HTTPError`` instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib's usual chain (proxies from the environment included), with these handlers in
    place of its HTTP, HTTPS and redirect handlers."""
    return urllib.request.build_opener(_NoRedirect, _HTTPHandler(deadline), _HTTPSHandler(deadline))


def _read_upto(stream: Any, cap: int) -> tuple[bytearray, bool]:
    """At most ``cap`` bytes of ``stream``, and whether it held more (reading stops there).
    ``read1`` returns what one read gave: no waiting to fill a chunk byte by byte."""
    read = getattr(stream, "read1", None) or stream.read
    buf = bytearray()  # no copies: json.loads takes a bytearray as it is
    while chunk := read(min(_CHUNK, cap + 1)):
        buf += chunk
        if len(buf) > cap:
            del buf[cap:]
            return buf, True
    return buf, False


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The start of an error body (at most ``ERROR_BODY_BYTES``); what does not come is left."""
    if not exc.fp:
        return ""
    try:
        raw, _ = _read_upto(exc, ERROR_BODY_BYTES)
    except (OSError, http.client.HTTPException):
        raw = bytearray()  # a body cut short (or the deadline): the status says enough
    finally:
        exc.close()
    return raw.decode(errors="replace")


def _parsed(url: str, raw: bytearray) -> Any:
    try:
        return json.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:  # bad JSON, a 5000-digit number, [[[[...
        raise LlmServerError(f"{url}: the answer is not JSON: {clipped(str(exc), 300)}") from None


def _redirected(url: str, exc: _Status) -> str:
    location = exc.headers.get("Location") or ""
    target = urllib.parse.urljoin(url, location) if location else ""
    host = urllib.parse.urlsplit(target).netloc if target else "nowhere (no Location)"
    return (
        f"{url}: HTTP {exc.code}: the server redirects to {clipped(host, 200)}; redirects are "
        "not followed (the API key would go with them): set agent.base_url to the final "
        f"address ({clipped(target, 300) or 'the server gave none'})"
    )


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
