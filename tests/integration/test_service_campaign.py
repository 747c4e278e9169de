"""A real campaign through the services: submit, watch (with a dropped link), get, cancel, SIGTERM.

The orchestrator trains real MACE models and scores them through the scorecard service over
gRPC on loopback; models, the test split and MD traces travel by file:// URI.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from service_stack import TOKEN, ServiceStack

from mlipilot.errors import MlipilotError
from mlipilot.ledger import read_events
from mlipilot.model_files import PACKAGE_NAME
from mlipilot.rpc.orchestrator_client import OrchestratorClient
from mlipilot.v1 import orchestrator_pb2, orchestrator_pb2_grpc, scorecard_pb2

pytestmark = pytest.mark.slow
FINISHED = orchestrator_pb2.CAMPAIGN_STATUS_FINISHED
CANCELLED = orchestrator_pb2.CAMPAIGN_STATUS_CANCELLED


@pytest.fixture(scope="module")
def watched(stack: ServiceStack):
    """A tiny campaign submitted and watched to its end, dropping the link once mid-way."""
    decisions_before = stack.metric(
        stack.orchestrator, 'mlipilot_decisions_total{verdict="ACCEPT"}'
    )
    decisions_before += stack.metric(
        stack.orchestrator, 'mlipilot_decisions_total{verdict="REVERT"}'
    )
    client = stack.client()
    campaign = client.create(stack.write_campaign("served"))
    first: list[orchestrator_pb2.CampaignEvent] = []
    stream = client.watch(campaign.id)
    for event in stream:
        first.append(event)
        if event.WhichOneof("event") == "training_progress":  # the baseline is training
            break
    stream.close()  # the watcher goes away while the campaign runs on
    time.sleep(3)  # events it misses meanwhile must come on reconnection
    rest = list(stack.client().watch(campaign.id, after=first[-1].sequence))
    return stack, campaign, first, rest, decisions_before


def test_a_reconnecting_watcher_misses_no_event(watched) -> None:
    stack, campaign, first, rest, _ = watched
    assert campaign.status == orchestrator_pb2.CAMPAIGN_STATUS_RUNNING
    ledger = read_events(stack.runs / campaign.id / "ledger.sqlite")
    seen = [e.sequence for e in first + rest]
    assert seen == [e.id for e in ledger]  # all of them, once, in order
    assert rest and rest[-1].WhichOneof("event") == "campaign_finished"
    assert rest[-1].campaign_finished.status == FINISHED
    kinds = [e.WhichOneof("event") for e in first + rest]
    for kind in (
        "campaign_started",
        "iteration_started",
        "proposal",
        "training_progress",
        "training_finished",
        "scorecard_progress",
        "result",
        "decision",
    ):
        assert kind in kinds, kind
    assert kinds.count("decision") == 3  # baseline + 2 iterations


def test_get_reports_the_finished_campaign_from_its_ledger(watched) -> None:
    stack, campaign, _, rest, _ = watched
    got = stack.client().get(campaign.id)
    assert got.status == FINISHED and got.name == "served" and got.agent == "rule-based"
    assert got.iterations_decided == 3 and got.iterations_budget == 2
    assert got.last_sequence == rest[-1].sequence
    decisions = [e for e in rest if e.WhichOneof("event") == "decision"]
    assert decisions[0].decision.verdict == orchestrator_pb2.VERDICT_BASELINE
    kept = (orchestrator_pb2.VERDICT_BASELINE, orchestrator_pb2.VERDICT_ACCEPT)
    incumbent = [e for e in decisions if e.decision.verdict in kept][-1]
    assert got.HasField("incumbent_iteration")
    assert got.incumbent_iteration == incumbent.iteration
    assert got.incumbent_result.composite == pytest.approx(incumbent.decision.composite)
    assert got.incumbent_result.feasible == incumbent.decision.feasible
    assert {c.metric for c in got.incumbent_result.constraints} >= {"force_mae_meV_per_A"}
    listed = {c.id: c for c in stack.client().list()}
    assert listed[campaign.id].status == FINISHED


def test_results_came_from_the_scorecard_service(watched) -> None:
    stack, campaign, first, rest, _ = watched
    card = stack.scorecard_stub().GetScorecard(
        scorecard_pb2.GetScorecardRequest(name="cu-emt-tiny"), timeout=5
    )
    results = [e.result for e in first + rest if e.WhichOneof("event") == "result"]
    assert len(results) == 3
    for r in results:
        assert r.result.scorecard_sha256 == card.sha256
        assert {c.metric for c in r.result.constraints} >= {"force_mae_meV_per_A"}
    # MD traces were written by the service into the candidate's folder, through its URI.
    traces = sorted((stack.runs / campaign.id / "candidates" / "it000" / "md").glob("*.csv"))
    assert len(traces) == 2 and traces[0].stat().st_size > 0


def test_metrics_count_the_decisions(watched) -> None:
    stack, _, _, _, before = watched
    after = stack.metric(stack.orchestrator, 'mlipilot_decisions_total{verdict="ACCEPT"}')
    after += stack.metric(stack.orchestrator, 'mlipilot_decisions_total{verdict="REVERT"}')
    assert after - before == 2  # the two proposals; the baseline is counted as BASELINE
    assert (
        stack.metric(stack.scorecard, 'mlipilot_evaluation_seconds_count{scorecard="cu-emt-tiny"}')
        >= 3
    )


def test_a_finished_campaigns_results_can_be_fetched(watched, tmp_path: Path) -> None:
    """Report, best model and ledger over gRPC, checked on arrival; the model as a package (no
    pickle crosses the wire) and written as a MACE file here."""
    import sqlite3

    from mlipilot.model_files import read_package

    stack, campaign, _, rest, _ = watched
    client = stack.client()
    page = client.fetch(campaign.id, "report", tmp_path / "report")
    assert page.name == "report.html" and campaign.id in page.read_text()
    assert sorted(p.name for p in (page.parent / "report").glob("*.png"))  # its figures
    mace_file = client.fetch(campaign.id, "model", tmp_path / "model")
    read_package(mace_file.with_name(PACKAGE_NAME))
    assert mace_file.name == "best.model" and mace_file.stat().st_size > 0
    got = client.get(campaign.id)
    incumbent = f"it{got.incumbent_iteration:03d}"
    served = stack.runs / campaign.id / "candidates" / incumbent / PACKAGE_NAME
    assert mace_file.with_name(PACKAGE_NAME).read_bytes() == served.read_bytes()
    ledger = client.fetch(campaign.id, "ledger", tmp_path / "ledger")
    with sqlite3.connect(ledger) as db:
        (rows,) = db.execute("SELECT count(*) FROM events").fetchone()
    assert rows == rest[-1].sequence
    # No token, no file; an unknown campaign is NOT_FOUND, as for every other call.
    anonymous = orchestrator_pb2_grpc.OrchestratorServiceStub(
        stack.channel(stack.orchestrator, token=None)
    )
    request = orchestrator_pb2.FetchArtifactRequest(
        id=campaign.id, artifact=orchestrator_pb2.ARTIFACT_LEDGER
    )
    with pytest.raises(grpc.RpcError) as refused:
        next(anonymous.FetchArtifact(request, timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(MlipilotError, match="no such campaign"):
        client.fetch("no-such-campaign-20261205-000000", "ledger", tmp_path / "x")
    authorised = orchestrator_pb2_grpc.OrchestratorServiceStub(stack.channel(stack.orchestrator))
    for artifact in (orchestrator_pb2.ARTIFACT_UNSPECIFIED, 99):
        unknown = orchestrator_pb2.FetchArtifactRequest(id=campaign.id, artifact=artifact)
        with pytest.raises(grpc.RpcError) as refused:
            next(authorised.FetchArtifact(unknown, timeout=10))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_evaluate_honours_the_callers_deadline(watched) -> None:
    stack, campaign, _, _, _ = watched
    run = stack.runs / campaign.id
    model = run / "candidates" / "it000" / PACKAGE_NAME
    test = read_events(run / "ledger.sqlite")[0]
    request = scorecard_pb2.EvaluateRequest(
        scorecard="cu-emt-tiny",
        model_uri=model.as_uri(),
        test_set_uri=(stack.root / "data" / "test.xyz").as_uri(),
        test_set_sha256=test.test_hash,
        candidate="deadline-test",
    )
    aborted = 'mlipilot_evaluations_total{scorecard="cu-emt-tiny",status="aborted"}'
    aborted_before = stack.metric(stack.scorecard, aborted)
    with pytest.raises(grpc.RpcError) as err:
        list(stack.scorecard_stub().Evaluate(request, timeout=0.3))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The service stops the abandoned evaluation at its next stage boundary or MD chunk. That
    # comes within seconds here; the margin is for a CI machine busy with other jobs.
    deadline = time.monotonic() + 180
    while stack.metric(stack.scorecard, aborted) == aborted_before:
        assert time.monotonic() < deadline, "the evaluation ran on after its deadline"
        time.sleep(0.2)
    # ... and the service is free again: a full evaluation with time to spare succeeds.
    events = list(stack.scorecard_stub().Evaluate(request, timeout=120))
    assert events[-1].HasField("result") and events[-1].result.test_set_sha256 == test.test_hash


def _wait_for_training(client: OrchestratorClient, campaign_id: str) -> None:
    for event in client.watch(campaign_id):
        if event.WhichOneof("event") == "training_progress":
            return
    raise AssertionError("the campaign ended before training started")


def test_cancel_stops_the_campaign_and_the_ledger_says_so(stack: ServiceStack) -> None:
    client = stack.client()
    # Far more epochs than fit before the cancel: training is surely under way when it lands.
    campaign = client.create(stack.write_campaign("cancelled", iterations=20, epochs=10_000))
    _wait_for_training(client, campaign.id)
    assert _processes_mentioning(stack.runs / campaign.id), "the trainer should be running"
    t0 = time.monotonic()
    cancelled = client.cancel(campaign.id)
    assert time.monotonic() - t0 < 30  # the trainer was killed, not waited for
    assert cancelled.status == CANCELLED
    assert not _processes_mentioning(stack.runs / campaign.id)  # no orphaned mace_run_train
    events = read_events(stack.runs / campaign.id / "ledger.sqlite")
    assert events[-1].event == "campaign_finished" and events[-1].status == "cancelled"
    trainings = [e for e in events if e.event == "training"]
    assert trainings and trainings[-1].status == "cancelled"
    assert not any(e.event == "decision" for e in events)
    with pytest.raises(Exception, match="FAILED_PRECONDITION"):
        client.cancel(campaign.id)


def _processes_mentioning(folder: Path) -> list[int]:
    """Pids whose command line names ``folder`` (the trainer's work dir is under it)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(folder) in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_records_running_campaigns_as_interrupted(
    stack: ServiceStack, tmp_path: Path
) -> None:
    """`mlipilot serve orchestrator` as its own process, stopped as Kubernetes stops a pod."""
    port = _free_port()
    runs = tmp_path / "runs"
    log = tmp_path / "server.log"
    proc = _serve_orchestrator(port, runs, log, stack, "--grace", "30")
    try:
        client = OrchestratorClient(stack.channel_to(f"127.0.0.1:{port}"), f"127.0.0.1:{port}")
        campaign = _create_when_up(client, stack.write_campaign("sigterm", epochs=10_000))
        _wait_for_training(client, campaign.id)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, log.read_text()
    assert not _processes_mentioning(runs / campaign.id)
    events = read_events(runs / campaign.id / "ledger.sqlite")
    assert events[-1].event == "campaign_finished"
    assert events[-1].status == "interrupted" and "shut down" in (events[-1].reason or "")


def _create_when_up(client: OrchestratorClient, path: Path, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.create(path)
        except Exception as exc:
            if "UNAVAILABLE" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _serve_orchestrator(
    port: int, runs: Path, log: Path, stack: ServiceStack, *args: str, **env: str
) -> subprocess.Popen:
    """`mlipilot serve orchestrator` as its own process, serving the stack's scorecards and
    keeping campaigns' data where the stack's do."""
    cmd = [*_CLI, "serve", "orchestrator", "--port", str(port), "--runs", str(runs)]
    cmd += ["--scorecards", str(stack.root / "specs"), "--data-root", str(stack.root / "data")]
    cmd += list(args)
    environ = {k: v for k, v in os.environ.items() if k != "MLIPILOT_KILL_AT"}
    with log.open("a") as out:  # a file, not a pipe: a full pipe would block the server
        return subprocess.Popen(
            cmd, env={**environ, "MLIPILOT_TOKEN": TOKEN, **env}, stdout=out, stderr=out
        )


_CLI = [sys.executable, "-m", "mlipilot.cli"]


def test_a_restarted_orchestrator_resumes_the_campaign_a_kill_cut_short(
    stack: ServiceStack, tmp_path: Path
) -> None:
    """kill -9 of the server during the baseline's MD (as a node loss would), then a new
    server on the same volume: the campaign goes on to its end under the same id."""
    runs, log = tmp_path / "runs", tmp_path / "server.log"
    port = _free_port()
    proc = _serve_orchestrator(port, runs, log, stack, MLIPILOT_KILL_AT="md:0")
    try:
        client = OrchestratorClient(stack.channel_to(f"127.0.0.1:{port}"), f"127.0.0.1:{port}")
        campaign = _create_when_up(client, stack.write_campaign("restart", iterations=1))
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    ledger = runs / campaign.id / "ledger.sqlite"
    killed = read_events(ledger)
    assert not [e for e in killed if e.event in ("evaluation", "decision", "campaign_finished")]
    assert not _processes_mentioning(runs / campaign.id)

    port = _free_port()
    proc = _serve_orchestrator(port, runs, log, stack)
    try:
        client = OrchestratorClient(stack.channel_to(f"127.0.0.1:{port}"), f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while "resumed campaign" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert f"resumed campaign {campaign.id}" in log.read_text()
        events = list(client.watch(campaign.id, after=killed[-1].id))
        got = client.get(campaign.id)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert events[0].WhichOneof("event") == "campaign_resumed"
    assert list(events[0].campaign_resumed.train_again) == ["it000"]
    assert events[-1].campaign_finished.status == FINISHED
    assert got.status == FINISHED and got.iterations_decided == 2
    final = read_events(ledger)
    assert final[: len(killed)] == killed  # nothing the killed server wrote was lost
    assert [e.candidate for e in final if e.event == "decision"] == ["it000", "it001"]
