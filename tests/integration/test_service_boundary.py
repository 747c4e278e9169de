"""The services' trust boundary, attacked: what a caller with a valid token sent, and why it
no longer works. Real orchestrator and scorecard servers on loopback (service_stack.py).

Each test replays an attack that worked before: a pickle that ran a shell command inside the
scorecard service, a campaign that sent a server secret to a URL of the caller's choosing or
read a server file back through an error message, an alias bomb, reads of /dev/zero and of
files outside the shared folders, and more watch streams than the server has threads. Nothing
here trains a model; the Cu data is generated with EMT in a second.
"""

from __future__ import annotations

import base64
import http.server
import os
import pickle
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml
from factories import untrained_mace
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_stack import (
    TOKEN,
    ServiceStack,
    field_violations,
    serve_orchestrator,
    serve_scorecard,
)

from mlipilot.campaign.layout import RunLayout
from mlipilot.data.dataset import Dataset, ensure_cu_emt
from mlipilot.ledger import Ledger
from mlipilot.model_files import write_package
from mlipilot.rpc.orchestrator_service import OrchestratorServicer, _Live
from mlipilot.rpc.scorecard_service import ScorecardServicer
from mlipilot.rpc.serving import ServerOptions
from mlipilot.stopping import StopRequest
from mlipilot.v1 import (
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    scorecard_pb2,
    scorecard_pb2_grpc,
)

SECRET = "s3cr3t-of-the-server-do-not-leak"


@pytest.fixture(scope="module")
def data(stack: ServiceStack) -> Dataset:
    """The campaigns' data set, where the stack's campaigns keep theirs (the data root)."""
    return ensure_cu_emt(stack.root / "data", seed=0, n_train=16, n_test=8)


@pytest.fixture(scope="module")
def package(stack: ServiceStack) -> Path:
    """A real model package (an untrained Cu MACE) where the services keep models."""
    model = untrained_mace([29], [-3.0]).double()
    return write_package(model, stack.runs / "untrained-package.pt")


class _Payload:
    """Unpickling this runs code: it writes the marker file (what a shell command could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _runs(stack: ServiceStack) -> list[Path]:
    return sorted(stack.runs.iterdir())


def _create(stack: ServiceStack, campaign: dict, name: str = "attack.yaml") -> grpc.RpcError:
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(stack.channel(stack.orchestrator))
    request = orchestrator_pb2.CreateCampaignRequest(
        campaign_yaml=yaml.safe_dump(campaign), source_name=name
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateCampaign(request, timeout=10)
    return info.value


def _campaign(stack: ServiceStack, name: str, **changes: object) -> dict:
    return {**yaml.safe_load(stack.write_campaign(name).read_text()), **changes}


# --- the orchestrator: what a campaign may ask of the server -------------------------------


def test_a_campaign_cannot_read_a_server_file_back_as_its_scorecard(
    stack: ServiceStack,
) -> None:
    """Was: `scorecard:` any server path; the validation error quoted the file's keys and
    values (a key file's private_key_id came back whole)."""
    before = _runs(stack)
    key_file = stack.root / "service-account.yaml"
    key_file.write_text(f"type: service_account\nprivate_key_id: {SECRET}\n")
    exc = _create(stack, _campaign(stack, "read-file", scorecard=str(key_file)))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(exc) == ["scorecard"]
    assert SECRET not in exc.details() and "service_account" not in exc.details()
    assert "cu-emt-tiny" in exc.details()  # what may be named instead
    assert _runs(stack) == before


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A server of the caller's choosing: records every request it gets."""

    seen: list[dict[str, str]] = []  # noqa: RUF012 - one list for the test module

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        body = b'{"data": [{"id": "m"}]}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_a_campaign_cannot_send_a_server_secret_to_a_url_it_picks(
    stack: ServiceStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: agent.base_url + agent.api_key_env sent any server variable as a bearer token to
    any URL, and the answer's first bytes came back in status_reason."""
    monkeypatch.setenv("MLIPILOT_TEST_SERVER_SECRET", SECRET)
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    before = _runs(stack)
    try:
        agent = {
            "kind": "llm",
            "base_url": f"http://127.0.0.1:{attacker.server_port}/v1",
            "model": "m",
            "api_key_env": "MLIPILOT_TEST_SERVER_SECRET",
        }
        exc = _create(stack, _campaign(stack, "exfiltrate", agent=agent))
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "agent.base_url" in exc.details() and "agent.endpoint" in exc.details()
        time.sleep(1.0)  # a campaign thread, had one started, would have called by now
        assert _Recorder.seen == []
        assert _runs(stack) == before
    finally:
        attacker.shutdown()


@pytest.mark.parametrize(
    "address", ["ray://127.0.0.1:10001", "127.0.0.1:6379", "ray://attacker.example:10001"]
)
def test_a_campaign_cannot_choose_the_ray_cluster(stack: ServiceStack, address: str) -> None:
    """Was: compute.ray_address pointed the orchestrator's Ray client (which unpickles what a
    Ray server sends) at a cluster of the caller's choosing."""
    before = _runs(stack)
    exc = _create(stack, _campaign(stack, "ray", compute={"ray_address": address}))
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "compute.ray_address" in exc.details()
    assert _runs(stack) == before


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"data": {"kind": "cu-emt", "path": "/etc/mlipilot-not-here"}}, "data.path"),
        ({"data": {"kind": "cu-emt", "path": "data/../.."}}, "data.path"),
        ({"agent": {"kind": "replay", "ledger": "/tmp"}}, "agent.ledger"),
    ],
)
def test_a_campaigns_files_stay_under_the_servers_roots(
    stack: ServiceStack, changes: dict, field: str
) -> None:
    """Was: data.path and agent.ledger opened (and wrote) any path on the server."""
    before = _runs(stack)
    exc = _create(stack, _campaign(stack, "paths", **changes))
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
    assert exc.details().startswith(f"campaign file attack.yaml: {field}: ")
    assert _runs(stack) == before


def test_an_alias_bomb_is_refused_before_anything_is_written(stack: ServiceStack) -> None:
    """Was: 468 bytes of aliases, 7 levels, in agent.extra_body wrote a 1.5 GB campaign.json."""
    before = _runs(stack)
    campaign = _campaign(stack, "laughs")
    del campaign["agent"]
    text = yaml.safe_dump(campaign) + "agent:\n  kind: rule-based\n  extra_body:\n"
    text += "    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    text += "".join(
        f"    l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}]\n"
        for i in range(1, 8)
    )
    assert len(text) < 1500
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(stack.channel(stack.orchestrator))
    request = orchestrator_pb2.CreateCampaignRequest(campaign_yaml=text, source_name="lol.yaml")
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateCampaign(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "aliases" in info.value.details() and len(info.value.details()) < 1000
    assert _runs(stack) == before


# --- the scorecard service: URIs are data, models are not code ------------------------------


def _evaluate(stack: ServiceStack, data: Dataset, **fields: str) -> grpc.RpcError:
    request = scorecard_pb2.EvaluateRequest(
        scorecard="cu-emt-tiny",
        test_set_uri=data.path("test").as_uri(),
        test_set_sha256=data.hash("test"),
        **fields,
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stack.scorecard_stub().Evaluate(request, timeout=60))
    return info.value


def test_a_pickled_model_never_runs_in_the_scorecard_service(
    stack: ServiceStack, data: Dataset, tmp_path: Path
) -> None:
    """Was: `Evaluate(model_uri="data:;base64,<a pickle>")` ran a shell command in the service
    that holds the test split: any fsspec scheme, then torch.load(weights_only=False)."""
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Payload(marker))
    in_uri = "data:;base64," + base64.b64encode(payload).decode()
    exc = _evaluate(stack, data, model_uri=in_uri)
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.details().startswith("model_uri: ") and "scheme 'data'" in exc.details()
    # The same pickle as a file where models live, and as a torch file: refused unread.
    import torch

    for name, write in [
        ("raw.model", lambda p: p.write_bytes(payload)),
        ("torch.model", lambda p: torch.save({"model": _Payload(marker)}, p)),
    ]:
        model = stack.runs / name
        write(model)
        exc = _evaluate(stack, data, model_uri=model.as_uri())
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert exc.details().startswith(f"model_uri: {model.as_uri()}: ")
        assert "weights_only" in exc.details() or "not a torch file" in exc.details()
    assert not marker.exists()


@pytest.mark.parametrize("target", ["/dev/zero", "/etc/passwd", "/proc/self/environ"])
def test_evaluate_reads_nothing_outside_its_roots(
    stack: ServiceStack, data: Dataset, target: str
) -> None:
    """Was: any readable file (and /dev/zero until the caller's deadline), and the sha256 of
    any file came back in the test-set error."""
    uri = Path(target).as_uri()
    for field in ("model_uri", "baseline_model_uri"):
        exc = _evaluate(stack, data, **{"model_uri": data.path("test").as_uri(), field: uri})
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc.details()
        assert exc.details().startswith(f"{field}: ")
    request = scorecard_pb2.EvaluateRequest(
        scorecard="cu-emt-tiny", model_uri=uri, test_set_uri=uri, test_set_sha256="0" * 64
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stack.scorecard_stub().Evaluate(request, timeout=10))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_links_fifos_and_lies_about_hashes_tell_nothing(
    stack: ServiceStack, data: Dataset, package: Path
) -> None:
    link = stack.runs / "innocent.model"
    link.symlink_to("/etc/passwd")
    exc = _evaluate(stack, data, model_uri=link.as_uri())
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED  # judged where it leads
    fifo = stack.runs / "fifo.model"
    os.mkfifo(fifo)
    start = time.monotonic()
    exc = _evaluate(stack, data, model_uri=fifo.as_uri())
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a regular file" in exc.details()
    junk = stack.runs / "junk.model"
    junk.write_bytes(b"not a model")
    exc = _evaluate(stack, data, model_uri=junk.as_uri())  # names the URI, not a temporary copy
    assert exc.details().startswith(f"model_uri: {junk.as_uri()}: not a torch file")
    assert time.monotonic() - start < 30  # answered, not blocked until the deadline
    request = scorecard_pb2.EvaluateRequest(
        scorecard="cu-emt-tiny",
        model_uri=package.as_uri(),
        test_set_uri=data.path("train").as_uri(),  # readable, but not the hash claimed
        test_set_sha256="0" * 64,
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stack.scorecard_stub().Evaluate(request, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not have the sha256 requested" in info.value.details()
    assert data.hash("train") not in info.value.details()  # no hash oracle


def test_artifacts_go_only_under_the_write_roots(stack: ServiceStack, data: Dataset) -> None:
    """Was: artifacts_uri wrote MD traces to any fsspec target, the data folder included."""
    for target in (data.root.as_uri(), "memory://x", "file:///tmp/anywhere"):
        exc = _evaluate(stack, data, model_uri=data.path("test").as_uri(), artifacts_uri=target)
        assert exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
        assert exc.details().startswith("artifacts_uri: ")


# --- load: a caller cannot exhaust a server --------------------------------------------------


OPTIONS = ServerOptions(token=TOKEN, max_workers=12)


def _healthy(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_watch_streams_and_campaigns_are_capped(stack: ServiceStack, tmp_path: Path) -> None:
    """Was: 64 WatchCampaign streams took every server thread and starved the health probe;
    nothing capped the campaigns running at once."""
    servicer = OrchestratorServicer(
        tmp_path / "runs",
        stack.servicer.policy,
        base_dir=stack.root,
        max_campaigns=1,
        max_watchers=2,
    )
    # A campaign in its first moments: running here, its ledger still empty (so watchers wait).
    layout = RunLayout.create(tmp_path / "runs", "live")
    Ledger(layout.ledger).close()
    servicer._live[layout.root.name] = _Live(threading.Thread(), StopRequest(), layout)
    running = serve_orchestrator(servicer, OPTIONS)
    channel = stack.channel_to(f"127.0.0.1:{running.port}")
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    streams = []
    try:
        request = orchestrator_pb2.WatchCampaignRequest(id=layout.root.name)
        for _ in range(2):
            streams.append(stub.WatchCampaign(request, timeout=30))
        time.sleep(0.5)  # both are in the server's poll loop
        with pytest.raises(grpc.RpcError) as info:
            next(stub.WatchCampaign(request, timeout=10))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "watch streams" in info.value.details()
        assert _healthy(channel)
        create = orchestrator_pb2.CreateCampaignRequest(
            campaign_yaml=stack.write_campaign("one-too-many").read_text(),
            source_name="one-too-many.yaml",
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateCampaign(create, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "campaigns are running" in info.value.details()
        assert [p.name for p in (tmp_path / "runs").iterdir()] == [layout.root.name]
    finally:
        for stream in streams:
            stream.cancel()
        servicer._live.clear()
        running.stop(0)


def test_evaluations_waiting_for_a_slot_are_capped(stack: ServiceStack, data: Dataset) -> None:
    """Was: every Evaluate waited for the one slot, each holding a server thread."""
    servicer = ScorecardServicer(
        stack.scorecard_servicer.catalog,
        stack.scorecard_servicer.uris,
        max_concurrent=1,
        max_queued=1,
    )
    running = serve_scorecard(servicer, OPTIONS)
    channel = stack.channel_to(f"127.0.0.1:{running.port}")
    stub = scorecard_pb2_grpc.ScorecardServiceStub(channel)
    request = scorecard_pb2.EvaluateRequest(
        scorecard="cu-emt-tiny",
        model_uri=data.path("test").as_uri(),
        test_set_uri=data.path("test").as_uri(),
        test_set_sha256=data.hash("test"),
    )
    assert servicer._slots.acquire(blocking=False)  # an evaluation in progress holds the slot
    try:
        waiting = stub.Evaluate(request, timeout=30)
        assert next(waiting).progress.stage == "queued"  # the one allowed to wait
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Evaluate(request, timeout=10))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "waiting already" in info.value.details()
        assert _healthy(channel)
        waiting.cancel()
    finally:
        servicer._slots.release()
        running.stop(0)
