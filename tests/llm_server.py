"""A scripted OpenAI-compatible HTTP server on loopback: it stands in for vLLM in the tests.

vLLM cannot serve a 32B model on this machine, so the tests talk real HTTP to this server
instead: ``GET /v1/models`` lists what it serves; each ``POST /v1/chat/completions`` answers
with the next scripted step (an assistant message with tool calls or text, or an HTTP error
such as 429 or 500) and records the request it got. Usage is counted the way a server would
report it, here as characters / 4 of what was sent and returned (a stand-in for a tokenizer).

A hostile server is scripted too: a ``Raw`` step writes bytes as given, chunk by chunk with a
pause before each (an oversized or endless body, a slow drip, a lying Content-Length), and
``redirect_to`` answers every request with a redirect to another server. ``seen`` holds the
method, path and headers of every request, whatever its path.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HttpError:
    status: int
    body: str = '{"error": {"message": "scripted error"}}'
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Raw:
    """A reply written as given (status line and headers included, see ``raw_reply``): each
    chunk after ``pause_s``, until the chunks end or the client hangs up."""

    chunks: Iterable[bytes]
    pause_s: float = 0.0


def raw_reply(status: int, body: bytes, headers: dict[str, str] | None = None) -> list[bytes]:
    """An HTTP/1.1 reply as two chunks, head and body (the body is not copied). The head says
    ``Content-Length: len(body)`` unless ``headers`` gives one, or gives it as "" (none:
    the body ends when the connection closes)."""
    fields = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    fields.update(headers or {})
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in fields.items() if v != ""]
    return [("\r\n".join([*lines, "Connection: close", "", ""])).encode(), body]


# A scripted step: an assistant message (dict), an HTTP error, raw bytes, or a function of
# the request that returns one of these.
Step = dict[str, Any] | HttpError | Raw | Callable[[dict[str, Any]], Any]


def tool_call(name: str, arguments: Any, call_id: str = "call_0") -> dict[str, Any]:
    """One tool call as vLLM sends it (arguments: a JSON string, or raw text as given)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def calls(*items: dict[str, Any], content: str | None = None) -> dict[str, Any]:
    """An assistant message with tool calls and (as vLLM sends it) null content."""
    return {"role": "assistant", "content": content, "tool_calls": list(items)}


def text(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def tokens(data: Any) -> int:
    return max(1, len(json.dumps(data)) // 4)


@dataclass
class ScriptedServer:
    models: list[str]
    script: list[Step] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)  # chat requests, in order
    headers: list[dict[str, str]] = field(default_factory=list)
    usage: list[dict[str, int]] = field(default_factory=list)  # what each 200 reported
    url: str = ""
    redirect_to: str | None = None  # set: every request is redirected there (+ its path)
    redirect_status: int = 307
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # every request
    written: int = 0  # bytes of Raw steps written
    hung_up: bool = False  # a client hung up before a Raw step was all written
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_step(self, request: dict[str, Any]) -> Step:
        with self._lock:
            self.requests.append(request)
            if not self.script:
                return HttpError(500, '{"error": {"message": "script exhausted"}}')
            return self.script.pop(0)

    def completion(self, request: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
        """A chat completion; a step's ``_usage`` (prompt, completion) overrides the count,
        its ``_finish`` the finish reason."""
        message = dict(message)
        fixed = message.pop("_usage", None)
        prompt = tokens(request.get("messages")) + tokens(request.get("tools") or [])
        prompt, completion = fixed or (prompt, tokens(message))
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self.usage.append(usage)
        finish = message.pop("_finish", None) or (
            "tool_calls" if message.get("tool_calls") else "stop"
        )
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "model": request.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _seen(self) -> bool:
            """Record the request; answer it with the redirect, if there is one."""
            server.seen.append((self.command, self.path, dict(self.headers)))
            if server.redirect_to is None:
                return False
            location = server.redirect_to.rstrip("/") + self.path.removeprefix("/v1")
            self._send(server.redirect_status, "{}", {"Location": location})
            return True

        def _raw(self, step: Raw) -> None:
            self.close_connection = True
            try:
                for chunk in step.chunks:
                    if step.pause_s:
                        time.sleep(step.pause_s)
                    self.wfile.write(chunk)
                    server.written += len(chunk)
            except OSError:  # BrokenPipe, ConnectionReset: the client hung up
                server.hung_up = True

        def do_GET(self) -> None:
            if self._seen():
                return
            if self.path == "/v1/models":
                data = [{"id": m, "object": "model", "owned_by": "vllm"} for m in server.models]
                self._send(200, json.dumps({"object": "list", "data": data}))
            else:
                self._send(404, '{"error": {"message": "not found"}}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if self._seen():
                return
            if self.path != "/v1/chat/completions":
                self._send(404, '{"error": {"message": "not found"}}')
                return
            if request.get("model") not in server.models:
                message = f"The model `{request.get('model')}` does not exist."
                self._send(404, json.dumps({"error": {"message": message}}))
                return
            server.headers.append(dict(self.headers))
            step = server.next_step(request)
            if callable(step):
                step = step(request)
            if isinstance(step, HttpError):
                self._send(step.status, step.body, step.headers)
                return
            if isinstance(step, Raw):
                self._raw(step)
                return
            self._send(200, json.dumps(server.completion(request, step)))

    return Handler


@contextmanager
def serve(
    models: list[str], script: list[Step] | None = None, redirect_to: str | None = None
) -> Iterator[ScriptedServer]:
    """A scripted server on 127.0.0.1 (a free port) for the ``with`` block; ``.url`` ends /v1."""
    scripted = ScriptedServer(models=models, script=list(script or []), redirect_to=redirect_to)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(scripted))
    scripted.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield scripted
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
