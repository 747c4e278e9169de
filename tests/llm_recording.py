"""Record a real model server's chat completions, and replay them through the scripted server.

Recording (once, by hand, against a real server; nothing here runs in CI)::

    python tests/llm_recording.py --upstream http://127.0.0.1:8765/v1 --port 8766 --out F.jsonl

is a loopback proxy: the agent talks to http://127.0.0.1:8766/v1, every request goes on to the
upstream server unchanged, and each chat completion is appended to ``F.jsonl`` as
``{"request": ..., "response": ...}`` exactly as the server answered it. ``replay_steps``
turns such a file into scripted steps (tests/llm_server.py): each answers with the recorded
message (its text and tool calls as the real server parsed them), usage and finish reason,
after checking that the agent sent as many messages as it did when the recording was made: a
replay that has drifted from its recording is answered with HTTP 400 there and the drift is
noted in ``drifts``, for the test to show.
"""

from __future__ import annotations

import argparse
import json
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from llm_server import HttpError


def read_recording(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def replay_steps(
    records: list[dict[str, Any]], drifts: list[str]
) -> list[Callable[[dict[str, Any]], Any]]:
    """One scripted step per recorded completion, in order."""

    def step(index: int, record: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
        def answer(request: dict[str, Any]) -> Any:
            want = len(record["request"]["messages"])
            got = len(request.get("messages") or [])
            if got != want:
                drifts.append(f"call {index}: {got} messages sent, {want} when recorded")
                return HttpError(400, json.dumps({"error": {"message": drifts[-1]}}))
            choice = record["response"]["choices"][0]
            usage = record["response"].get("usage") or {}
            return {
                **choice["message"],
                "_usage": (usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
                "_finish": choice.get("finish_reason") or "stop",
            }

        return answer

    return [step(i, r) for i, r in enumerate(records)]


def _proxy(upstream: str, out: Path) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Proxy(BaseHTTPRequestHandler):
        def _forward(self, body: bytes | None) -> None:
            url = upstream.rstrip("/") + self.path.removeprefix("/v1")
            request = urllib.request.Request(url, data=body, method=self.command)
            request.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(request, timeout=3600) as response:
                data, status = response.read(), response.status
            if body is not None and self.path.endswith("/chat/completions") and status == 200:
                with lock, out.open("a") as f:
                    record = {"request": json.loads(body), "response": json.loads(data)}
                    f.write(json.dumps(record) + "\n")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._forward(None)

        def do_POST(self) -> None:
            self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    return Proxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _proxy(args.upstream, args.out))
    print(f"recording {args.upstream} at http://127.0.0.1:{args.port}/v1 into {args.out}")
    server.serve_forever()


if __name__ == "__main__":
    main()
