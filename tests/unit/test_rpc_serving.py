"""The shared gRPC serving plumbing: health, reflection, bearer tokens, TLS, metrics, signals.

Real servers on 127.0.0.1, port 0; the health and reflection services (and a tiny bytes echo)
stand in for the mlipilot services.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tls_certs import write_self_signed

from mlipilot.errors import MlipilotError
from mlipilot.rpc.auth import load_token
from mlipilot.rpc.channel import open_channel
from mlipilot.rpc.metrics import DECISIONS, start_metrics_server
from mlipilot.rpc.serving import RunningServer, ServerOptions, serve_until_signal, start_server

TEST_SERVICE = "mlipilot.v1.Test"
ECHO_SERVICE = "mlipilot.v1.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
TOKEN = "s3cret-token"
TIMEOUT = 5

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def register_echo(server: grpc.Server) -> None:
    """A unary bytes pass-through, to check auth on a plain unary method."""
    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}
    )
    server.add_generic_rpc_handlers((handler,))


@pytest.fixture
def serve() -> Iterator:
    started: list[RunningServer] = []

    def _serve(**kwargs: object) -> RunningServer:
        running = start_server(ServerOptions(**kwargs), register_echo, [TEST_SERVICE, ECHO_SERVICE])
        started.append(running)
        return running

    yield _serve
    for running in started:
        running.stop(0)


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status


def list_services(channel: grpc.Channel, metadata: tuple = ()) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT, metadata=metadata)
    return [s.name for r in responses for s in r.list_services_response.service]


def echo(channel: grpc.Channel, payload: bytes = b"ping", metadata: tuple = ()) -> bytes:
    call = channel.unary_unary(ECHO_METHOD)  # no serializers: bytes in, bytes out
    return call(payload, timeout=TIMEOUT, metadata=metadata)


def test_health_serving_then_not_serving(serve) -> None:
    running = serve()
    assert running.port > 0
    with open_channel(f"127.0.0.1:{running.port}") as channel:
        assert health_status(channel) == SERVING
        assert health_status(channel, TEST_SERVICE) == SERVING
        with pytest.raises(grpc.RpcError) as err:
            health_status(channel, "mlipilot.v1.Unknown")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        running.set_serving(False)
        assert health_status(channel) == NOT_SERVING
        assert health_status(channel, TEST_SERVICE) == NOT_SERVING
        running.set_serving(True)
        assert health_status(channel, ECHO_SERVICE) == SERVING


def test_reflection_lists_services_without_auth(serve) -> None:
    running = serve()
    with open_channel(f"127.0.0.1:{running.port}") as channel:
        names = list_services(channel)
    assert set(names) >= {
        TEST_SERVICE,
        ECHO_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    with open_channel(f"127.0.0.1:{running.port}") as channel:
        assert echo(channel, b"hello") == b"hello"


def test_token_required_on_streaming_reflection(serve) -> None:
    running = serve(token=TOKEN)
    target = f"127.0.0.1:{running.port}"
    with open_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            list_services(channel)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "missing bearer token" in err.value.details()

        with pytest.raises(grpc.RpcError) as err:
            list_services(channel, metadata=(("authorization", "Bearer not-the-token"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "wrong bearer token" in err.value.details()

        with pytest.raises(grpc.RpcError) as err:  # the token without the scheme
            list_services(channel, metadata=(("authorization", TOKEN),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # Probes carry no token: health stays open.
        assert health_status(channel) == SERVING
        assert health_status(channel, TEST_SERVICE) == SERVING

    with open_channel(target, token="not-the-token") as channel:
        with pytest.raises(grpc.RpcError) as err:
            list_services(channel)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with open_channel(target, token=TOKEN) as channel:
        assert "grpc.health.v1.Health" in list_services(channel)
        assert health_status(channel) == SERVING


def test_token_required_on_unary_method(serve) -> None:
    running = serve(token=TOKEN)
    target = f"127.0.0.1:{running.port}"
    with open_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            echo(channel)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "missing bearer token" in err.value.details()
        # An unknown method is rejected the same way: no hint of what exists.
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/mlipilot.v1.Nope/Nope")(b"", timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with open_channel(target, token="wrong") as channel:
        with pytest.raises(grpc.RpcError) as err:
            echo(channel)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "wrong bearer token" in err.value.details()
    with open_channel(target, token=TOKEN) as channel:
        assert echo(channel, b"payload") == b"payload"
        # The interceptor replaces a stale authorization entry instead of sending two.
        assert echo(channel, b"x", metadata=(("authorization", "Bearer old"),)) == b"x"


def test_tls_with_token(serve, tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path, ("localhost",), ("127.0.0.1",))
    running = serve(token=TOKEN, tls_cert=cert, tls_key=key)
    target = f"localhost:{running.port}"
    with open_channel(target, token=TOKEN, tls_ca=cert) as channel:
        assert echo(channel, b"over tls") == b"over tls"
        assert "grpc.health.v1.Health" in list_services(channel)
    with open_channel(target, tls_ca=cert) as channel:
        assert health_status(channel) == SERVING  # health needs no token over TLS either
        with pytest.raises(grpc.RpcError) as err:
            echo(channel)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A plain-text client cannot talk to the TLS port.
    with open_channel(target, token=TOKEN) as channel:
        with pytest.raises(grpc.RpcError) as err:
            health_status(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_cert_and_key_both_or_neither(tmp_path: Path) -> None:
    with pytest.raises(MlipilotError, match="tls_key is missing"):
        ServerOptions(tls_cert=tmp_path / "server.crt")
    with pytest.raises(MlipilotError, match="tls_cert is missing"):
        ServerOptions(tls_key=tmp_path / "server.key")


def test_unreadable_tls_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(MlipilotError, match=re.escape(str(missing))):
        start_server(ServerOptions(tls_cert=missing, tls_key=missing), register_echo, [])


def test_port_in_use_names_the_address(serve) -> None:
    running = serve()
    with pytest.raises(MlipilotError, match=f"127.0.0.1:{running.port}"):
        start_server(ServerOptions(port=running.port), register_echo, [])


def metric_value(port: int, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0  # a labelled series appears only once it has been touched


def test_metrics_endpoint_counts(serve) -> None:
    port = start_metrics_server(0)
    assert port > 0
    series = 'mlipilot_decisions_total{verdict="ACCEPT"}'
    before = metric_value(port, series)
    DECISIONS.labels(verdict="ACCEPT").inc()
    assert metric_value(port, series) == before + 1

    running = serve(metrics_port=0)
    assert running.metrics_port is not None and running.metrics_port != port
    assert metric_value(running.metrics_port, series) == before + 1


def test_load_token_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLIPILOT_TOKEN", "from-env")
    path = tmp_path / "token"
    path.write_text("  file-token\n")
    assert load_token(path) == "file-token"  # the file wins over the environment


def test_load_token_empty_or_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty-token"
    empty.write_text(" \n")
    with pytest.raises(MlipilotError, match=re.escape(str(empty))):
        load_token(empty)
    missing = tmp_path / "missing-token"
    with pytest.raises(MlipilotError, match=re.escape(str(missing))):
        load_token(missing)


def test_load_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLIPILOT_TOKEN", " env-token ")
    assert load_token(None) == "env-token"
    monkeypatch.setenv("OTHER_TOKEN", "other")
    assert load_token(None, env_var="OTHER_TOKEN") == "other"
    monkeypatch.setenv("MLIPILOT_TOKEN", "")
    assert load_token(None) is None
    monkeypatch.delenv("MLIPILOT_TOKEN")
    assert load_token(None) is None


def test_serve_until_signal_shuts_down_on_sigterm(serve) -> None:
    running = serve()
    target = f"127.0.0.1:{running.port}"
    previous_term = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)
    seen_at_shutdown: list[int] = []

    def on_shutdown() -> None:
        # Health already says NOT_SERVING while the service cleans up.
        with open_channel(target) as channel:
            seen_at_shutdown.append(health_status(channel))

    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        serve_until_signal(running, on_shutdown=on_shutdown, grace_s=0.5)
    finally:
        timer.cancel()
    assert seen_at_shutdown == [NOT_SERVING]
    assert signal.getsignal(signal.SIGTERM) is previous_term
    assert signal.getsignal(signal.SIGINT) is previous_int
    with open_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            health_status(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_serve_until_signal_returns_when_server_stops(serve) -> None:
    running = serve()
    previous_term = signal.getsignal(signal.SIGTERM)
    calls: list[str] = []
    timer = threading.Timer(0.3, running.stop, (0,))
    timer.start()
    try:
        serve_until_signal(running, on_shutdown=lambda: calls.append("shutdown"), grace_s=0.1)
    finally:
        timer.cancel()
    assert calls == ["shutdown"]
    assert signal.getsignal(signal.SIGTERM) is previous_term


def test_serve_until_signal_needs_main_thread(serve) -> None:
    running = serve()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve_until_signal(running)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(TIMEOUT)
    assert len(errors) == 1 and "main thread" in str(errors[0])


# --- the trust boundary: who may reach a server, and how much of it ---------------------------

HOLD_SERVICE = "mlipilot.v1.Hold"
HOLD_METHOD = f"/{HOLD_SERVICE}/Hold"


def register_hold(release: threading.Event):
    """Echo, plus a server stream that holds its thread until ``release`` (a watcher)."""

    def hold(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"started"
        while not release.wait(0.05) and context.is_active():
            pass
        yield b"released"

    def register(server: grpc.Server) -> None:
        register_echo(server)
        handler = grpc.method_handlers_generic_handler(
            HOLD_SERVICE, {"Hold": grpc.unary_stream_rpc_method_handler(hold)}
        )
        server.add_generic_rpc_handlers((handler,))

    return register


def test_streams_that_fill_the_pool_starve_neither_health_nor_the_server() -> None:
    """The attack: as many WatchCampaign-like streams as the server has threads. Without the
    cap, the next call (a kubelet's health probe) waited behind them until it timed out."""
    release = threading.Event()
    running = start_server(ServerOptions(max_workers=6), register_hold(release), [HOLD_SERVICE])
    channel = open_channel(f"127.0.0.1:{running.port}")
    streams = []
    try:
        admitted, refused = 0, 0
        for _ in range(12):  # twice the pool
            stream = channel.unary_stream(HOLD_METHOD)(b"", timeout=30)
            streams.append(stream)
            try:
                assert next(stream) == b"started"
                admitted += 1
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                assert "calls, its most at once" in exc.details()
                refused += 1
        assert admitted == ServerOptions(max_workers=6).max_calls == 3 and refused == 9
        assert health_status(channel) == SERVING  # within TIMEOUT, with every slot held
        with pytest.raises(grpc.RpcError) as info:
            echo(channel)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        for stream in streams[:admitted]:
            assert list(stream) == [b"released"]
        assert echo(channel) == b"ping"  # slots come back when the streams end
    finally:
        release.set()
        running.stop(0)


def test_a_caller_that_goes_away_gives_its_slot_back(serve) -> None:
    release = threading.Event()
    running = start_server(ServerOptions(max_workers=4), register_hold(release), [HOLD_SERVICE])
    channel = open_channel(f"127.0.0.1:{running.port}")
    try:
        for _ in range(6):  # more than max_calls, one after the other, each cancelled
            stream = channel.unary_stream(HOLD_METHOD)(b"", timeout=30)
            assert next(stream) == b"started"
            stream.cancel()
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                try:
                    assert echo(channel) == b"ping"
                    break
                except grpc.RpcError:
                    time.sleep(0.05)  # the cancel reaches the server a moment later
        assert echo(channel) == b"ping"
    finally:
        release.set()
        running.stop(0)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "my-host.example"])
def test_a_server_will_not_listen_beyond_loopback_without_a_token(host: str) -> None:
    with pytest.raises(MlipilotError, match=f"refusing to listen on {re.escape(host)} without"):
        ServerOptions(host=host)
    assert ServerOptions(host=host, token="t").token == "t"
    assert ServerOptions(host=host, insecure=True).insecure  # said in so many words
    for loopback in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert ServerOptions(host=loopback).token is None


def test_metrics_need_the_servers_token(serve) -> None:
    running = serve(token=TOKEN, metrics_port=0)
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
        assert info.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        assert b"mlipilot_decisions_total" in response.read()


def test_the_campaign_metrics_follow_candidates_through_their_stages() -> None:
    from prometheus_client import REGISTRY

    from mlipilot.campaign.decision import Decision
    from mlipilot.campaign.reporting import IterationRow
    from mlipilot.rpc.orchestrator_service import MetricsReporter

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {s: value("mlipilot_candidates_in_flight", stage=s) for s in ("training", "scoring")}
    tokens = value("mlipilot_llm_tokens_total", kind="prompt")
    reporter = MetricsReporter()
    reporter.stage("it001", "train", 1, 10)
    reporter.stage("it001", "train", 2, 10)  # the same stage again: counted once
    reporter.stage("it002", "train", 1, 10)
    assert value("mlipilot_candidates_in_flight", stage="training") == before["training"] + 2
    reporter.stage("it001", "md", 1, 4)
    assert value("mlipilot_candidates_in_flight", stage="training") == before["training"] + 1
    assert value("mlipilot_candidates_in_flight", stage="scoring") == before["scoring"] + 1
    row = IterationRow.build(
        1, "h", {}, None, Decision(verdict="REVERT", reason="r"), candidate="it001"
    ).model_copy(update={"prompt_tokens": 120, "completion_tokens": 30})
    reporter.decision(row)
    assert value("mlipilot_candidates_in_flight", stage="scoring") == before["scoring"]
    assert value("mlipilot_llm_tokens_total", kind="prompt") == tokens + 120
    reporter.close()  # the campaign ended with it002 still training (a stop, a crash)
    assert value("mlipilot_candidates_in_flight", stage="training") == before["training"]
