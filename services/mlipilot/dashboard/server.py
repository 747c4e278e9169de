"""The dashboard's HTTP server: a static page, a JSON API and a server-sent event stream.

Read-only (GET only), offline (the page and its one plotting library, uPlot, are files of this
package) and behind the same bearer token as the gRPC services. A browser proves the token
once, ``/?token=...``, and gets it back as an HttpOnly, SameSite=Strict cookie (an
EventSource cannot send headers); scripts send ``Authorization: Bearer ...``. The page's
Content-Security-Policy allows scripts from this server only: an agent's hypothesis that
smuggled markup into the page could not run it, and the page never inserts text as markup.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from mlipilot.dashboard import views
from mlipilot.dashboard.feeds import Feeds, UnknownCampaign
from mlipilot.errors import MlipilotError
from mlipilot.rpc.serving import is_loopback

STATIC = Path(__file__).parent / "static"
COOKIE = "mlipilot_dashboard"
CANDIDATE = re.compile(r"^it\d{3,}(-\d+)?$")
MAX_COMPARED = 12
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FEEDS = web.AppKey("feeds", Feeds)
TOKEN = web.AppKey("token", str)
STOPPING = web.AppKey("stopping", asyncio.Event)  # set on shutdown: open streams end


def create_app(runs_root: Path, token: str | None, tick_s: float = 0.5) -> web.Application:
    """The dashboard over every campaign in ``runs_root``; ``token`` None: no token asked
    (only for a server bound to loopback: ``serve`` refuses otherwise)."""
    app = web.Application(middlewares=[_security_headers, _authorised])
    app[FEEDS] = Feeds(runs_root, tick_s)
    app[TOKEN] = token or ""
    app[STOPPING] = asyncio.Event()
    app.router.add_get("/", _index)
    app.router.add_get("/api/campaigns", _campaigns)
    app.router.add_get("/api/campaigns/{run_id}", _campaign)
    app.router.add_get("/api/campaigns/{run_id}/candidates/{name}", _candidate)
    app.router.add_get("/api/campaigns/{run_id}/stream", _stream)
    app.router.add_get("/api/compare", _compare)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    app.cleanup_ctx.append(_follower)
    app.on_shutdown.append(_end_streams)
    return app


async def _end_streams(app: web.Application) -> None:
    app[STOPPING].set()
    feeds = app[FEEDS]
    async with feeds.changed:
        feeds.changed.notify_all()


async def _follower(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[FEEDS].follow())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    for key, value in HEADERS.items():
        response.headers.setdefault(key, value)
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def _authorised(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app[TOKEN]
    if not expected:
        return await handler(request)
    offered = request.query.get("token") if request.path == "/" else None
    if offered is not None:  # the browser's first visit: the token becomes a cookie
        if not hmac.compare_digest(offered.encode(), expected.encode()):
            raise web.HTTPUnauthorized(text="wrong token\n")
        response = web.HTTPSeeOther("/")
        response.set_cookie(COOKIE, expected, httponly=True, samesite="Strict", path="/")
        raise response
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    given = given or request.cookies.get(COOKIE, "")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise web.HTTPUnauthorized(
            text="a token is required: open /?token=TOKEN, or send Authorization: Bearer\n",
            headers={"WWW-Authenticate": 'Bearer realm="mlipilot"'},
        )
    return await handler(request)


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


def _json(payload: Any) -> web.Response:
    return web.json_response(payload, dumps=lambda o: json.dumps(o, allow_nan=False))


def _feed(request: web.Request, run_id: str):
    try:
        return request.app[FEEDS].feed(run_id)
    except UnknownCampaign as exc:
        raise web.HTTPNotFound(text=f"{exc}\n") from None


async def _campaigns(request: web.Request) -> web.Response:
    feeds = request.app[FEEDS]
    return _json({"campaigns": [views.summary(feeds.feed(i)) for i in feeds.ids()]})


async def _campaign(request: web.Request) -> web.Response:
    return _json(views.campaign(_feed(request, request.match_info["run_id"])))


async def _candidate(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not CANDIDATE.match(name):
        raise web.HTTPNotFound(text=f"no candidate {name!r}\n")
    shown = views.candidate(_feed(request, request.match_info["run_id"]), name)
    if shown is None:
        raise web.HTTPNotFound(text=f"no candidate {name!r}\n")
    return _json(shown)


async def _compare(request: web.Request) -> web.Response:
    ids = [i for i in request.query.get("ids", "").split(",") if i]
    if not 1 <= len(ids) <= MAX_COMPARED:
        raise web.HTTPBadRequest(text=f"ids: 1 to {MAX_COMPARED} campaign ids, comma-separated\n")
    return _json(views.compare([_feed(request, i) for i in ids]))


async def _stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the campaign's view now, then again after every change."""
    run_id = request.match_info["run_id"]
    feed = _feed(request, run_id)
    feeds = request.app[FEEDS]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no", **HEADERS}
    )
    await response.prepare(request)
    feeds.watch(run_id)
    stopping = request.app[STOPPING]
    try:
        sent = -1
        while not stopping.is_set():
            if feed.version != sent:
                sent = feed.version
                body = json.dumps(views.campaign(feed), allow_nan=False)
                await response.write(f"event: campaign\ndata: {body}\n\n".encode())
            async with feeds.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(feeds.changed.wait(), timeout=15)
            if feed.version == sent and not stopping.is_set():
                await response.write(b": keep-alive\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        feeds.unwatch(run_id)
    return response


def _check_exposure(host: str, token: str | None, insecure: bool) -> None:
    if not token and not insecure and not is_loopback(host):
        raise ValueError(f"--host {host}: a dashboard off loopback needs a token (--token-file)")


def serve(runs_root: Path, host: str, port: int, token: str | None) -> None:
    """Run the dashboard until interrupted (``mlipilot dashboard``)."""
    _check_exposure(host, token, insecure=False)
    web.run_app(create_app(runs_root, token), host=host, port=port, print=None)


@dataclass
class RunningDashboard:
    """A dashboard served from a thread of its own (beside the orchestrator's gRPC server)."""

    port: int
    _loop: asyncio.AbstractEventLoop
    _runner: web.AppRunner
    _thread: threading.Thread

    def stop(self, timeout: float = 20.0) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def start_in_thread(
    runs_root: Path,
    host: str,
    port: int,
    token: str | None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    insecure: bool = False,
    tick_s: float = 0.5,
) -> RunningDashboard:
    """Serve the dashboard on ``host:port`` (0: a free port) from a daemon thread."""
    _check_exposure(host, token, insecure)
    runner = web.AppRunner(create_app(runs_root, token, tick_s))
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        loop.run_until_complete(site.start())
    except OSError as exc:
        loop.run_until_complete(runner.cleanup())
        loop.close()
        raise MlipilotError(f"cannot serve the dashboard on {host}:{port}: {exc}") from exc
    server = runner.addresses[0]
    thread = threading.Thread(target=loop.run_forever, name="dashboard", daemon=True)
    thread.start()
    return RunningDashboard(int(server[1]), loop, runner, thread)
