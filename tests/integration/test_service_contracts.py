"""The services' contracts that need no training: health, auth, status codes, field names.

Real orchestrator and scorecard servers on loopback ports (see service_stack.py). Fast: nothing
here trains or runs MD, so it is not marked slow.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_stack import ServiceStack, field_violations, serve_orchestrator
from typer.testing import CliRunner

from mlipilot.cli import app
from mlipilot.errors import MlipilotError
from mlipilot.rpc.campaign_policy import CampaignPolicy
from mlipilot.rpc.channel import open_channel
from mlipilot.rpc.orchestrator_client import OrchestratorClient
from mlipilot.rpc.orchestrator_service import SERVICE_NAME as ORCHESTRATOR
from mlipilot.rpc.orchestrator_service import OrchestratorServicer
from mlipilot.rpc.scorecard_client import RemoteScorerFactory
from mlipilot.rpc.scorecard_service import SERVICE_NAME as SCORECARD
from mlipilot.v1 import orchestrator_pb2, orchestrator_pb2_grpc, scorecard_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_both_services_report_serving_without_a_token(stack: ServiceStack) -> None:
    for server, name in ((stack.orchestrator, ORCHESTRATOR), (stack.scorecard, SCORECARD)):
        health = health_pb2_grpc.HealthStub(stack.channel(server, token=None))
        for service in ("", name):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == SERVING, (server.port, service)


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_calls_without_the_right_token_are_unauthenticated(
    stack: ServiceStack, token: str | None
) -> None:
    before = sorted(stack.runs.iterdir())
    path = stack.write_campaign("unauthorized")
    with pytest.raises(MlipilotError, match="UNAUTHENTICATED"):
        stack.client(token=token).create(path)
    with pytest.raises(MlipilotError, match="UNAUTHENTICATED"):
        stack.client(token=token).list()
    with pytest.raises(grpc.RpcError) as err:
        stack.scorecard_stub(token=token).ListScorecards(
            scorecard_pb2.ListScorecardsRequest(), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert sorted(stack.runs.iterdir()) == before  # nothing was created


def _create_raw(stack: ServiceStack, text: str, name: str = "bad.yaml") -> grpc.RpcError:
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(stack.channel(stack.orchestrator))
    request = orchestrator_pb2.CreateCampaignRequest(
        campaign_yaml=text, source_name=name, base_dir=str(stack.root)
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCampaign(request, timeout=10)
    return err.value


def test_a_bad_campaign_file_is_invalid_argument_naming_the_field(stack: ServiceStack) -> None:
    before = sorted(stack.runs.iterdir())
    campaign = yaml.safe_load(stack.write_campaign("bad").read_text())
    campaign["budget"]["epochs"] = 0
    campaign["baseline"]["num_channels"] = 100_000
    exc = _create_raw(stack, yaml.safe_dump(campaign), "examples/bad.yaml")
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "examples/bad.yaml" in exc.details() and "budget.epochs" in exc.details()
    assert "num_channels" in exc.details()
    fields = field_violations(exc)
    assert "budget.epochs" in fields
    assert any(f.startswith("baseline") for f in fields)
    assert sorted(stack.runs.iterdir()) == before  # no campaign was created


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: x\n  bad: [indent\n", "campaign_yaml"),
        ("- a list\n- not a mapping\n", "campaign_yaml"),
    ],
)
def test_unparseable_campaign_text_is_invalid_argument(
    stack: ServiceStack, text: str, field: str
) -> None:
    exc = _create_raw(stack, text)
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad.yaml" in exc.details()
    assert field_violations(exc) == [field]


def test_a_scorecard_that_differs_from_the_services_is_refused(
    stack: ServiceStack, tmp_path: Path
) -> None:
    """Same name, different thresholds: an orchestrator whose catalog differs from the
    scorecard service's would judge by a different yardstick than the one that measures."""
    spec = yaml.safe_load((stack.root / "specs" / "cu-emt-tiny.yaml").read_text())
    spec["constraints"][0]["max"] = 1000.0
    loose = tmp_path / "cu-emt-tiny.yaml"
    loose.write_text(yaml.safe_dump(spec))
    policy = CampaignPolicy({"cu-emt-tiny": loose}, [stack.root / "data"], tmp_path / "runs")
    servicer = OrchestratorServicer(
        tmp_path / "runs",
        policy,
        scorer_factory=RemoteScorerFactory(stack.channel(stack.scorecard)),
        base_dir=stack.root,
    )
    server = serve_orchestrator(servicer)
    try:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(
            open_channel(f"127.0.0.1:{server.port}")
        )
        request = orchestrator_pb2.CreateCampaignRequest(
            campaign_yaml=stack.write_campaign("loose").read_text(), source_name="loose.yaml"
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateCampaign(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sha256" in err.value.details()
        assert field_violations(err.value) == ["scorecard"]
        assert list((tmp_path / "runs").iterdir()) == []
    finally:
        server.stop(grace_s=0)


def test_a_scorecard_the_server_does_not_serve_names_the_field(stack: ServiceStack) -> None:
    campaign = yaml.safe_load(stack.write_campaign("nospec").read_text())
    campaign["scorecard"] = "specs/absent.yaml"
    exc = _create_raw(stack, yaml.safe_dump(campaign))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "absent.yaml" in exc.details() and "cu-emt-tiny" in exc.details()  # says what is
    assert field_violations(exc) == ["scorecard"]


@pytest.mark.parametrize("campaign_id", ["no-such-campaign", "../runs", ".."])
def test_unknown_campaigns_are_not_found(stack: ServiceStack, campaign_id: str) -> None:
    client = stack.client()
    for call in (client.get, client.cancel, lambda i: list(client.watch(i))):
        with pytest.raises(MlipilotError, match="NOT_FOUND"):
            call(campaign_id)


def test_scorecard_service_lists_and_serves_its_specs(stack: ServiceStack) -> None:
    stub = stack.scorecard_stub()
    cards = stub.ListScorecards(scorecard_pb2.ListScorecardsRequest(), timeout=5).scorecards
    assert [c.name for c in cards] == ["cu-emt-tiny"]
    card = stub.GetScorecard(scorecard_pb2.GetScorecardRequest(name="cu-emt-tiny"), timeout=5)
    spec_file = stack.root / "specs" / "cu-emt-tiny.yaml"
    assert card.spec_yaml == spec_file.read_text()
    assert card.sha256 == hashlib.sha256(spec_file.read_bytes()).hexdigest()
    with pytest.raises(grpc.RpcError) as err:
        stub.GetScorecard(scorecard_pb2.GetScorecardRequest(name="qm7"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "cu-emt-tiny" in err.value.details()  # says what is known


def _evaluate(stack: ServiceStack, **fields: str) -> grpc.RpcError:
    request = scorecard_pb2.EvaluateRequest(scorecard="cu-emt-tiny", **fields)
    with pytest.raises(grpc.RpcError) as err:
        list(stack.scorecard_stub().Evaluate(request, timeout=30))
    return err.value


def test_evaluate_refuses_bad_requests_with_the_field(stack: ServiceStack, tmp_path) -> None:
    exc = _evaluate(stack, test_set_uri="file:///x", test_set_sha256="ab")
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "model_uri" in exc.details()

    exc = _evaluate(stack, model_uri="file:///x", scorecard_sha256="0" * 64)
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "scorecard_sha256" in exc.details()

    missing = (stack.runs / "absent.model").as_uri()  # under the service's roots
    exc = _evaluate(stack, model_uri=missing, test_set_uri=missing, test_set_sha256="ab")
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT  # the test set is read first
    assert exc.details().startswith("test_set_uri: ") and "absent.model" in exc.details()


def test_cli_submit_names_the_bad_field(
    stack: ServiceStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = yaml.safe_load(stack.write_campaign("cli-bad").read_text())
    campaign["agent"]["kind"] = "oracle"
    path = stack.root / "cli-bad.yaml"
    path.write_text(yaml.safe_dump(campaign))
    monkeypatch.setenv("MLIPILOT_TOKEN", "campaign-token")
    result = CliRunner().invoke(
        app, ["submit", str(path), "--server", stack.address(stack.orchestrator)]
    )
    assert result.exit_code == 2
    assert "INVALID_ARGUMENT" in result.output and "agent.kind" in result.output


def test_an_unreachable_scorecard_service_is_unavailable_not_a_bad_file(
    stack: ServiceStack, tmp_path
) -> None:
    """The file is fine; the service behind it is not: a retryable status, nothing created."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    servicer = OrchestratorServicer(
        tmp_path / "runs",
        stack.servicer.policy,
        scorer_factory=RemoteScorerFactory(open_channel(dead)),
        base_dir=stack.root,
    )
    server = serve_orchestrator(servicer)
    try:
        client = OrchestratorClient(open_channel(f"127.0.0.1:{server.port}"), "orchestrator")
        with pytest.raises(MlipilotError, match="UNAVAILABLE") as err:
            client.create(stack.write_campaign("no-scorer"))
        assert err.value.fields == ()
        assert list((tmp_path / "runs").iterdir()) == []
    finally:
        server.stop(grace_s=0)


def test_submit_paths_resolve_in_the_servers_folder_when_asked(
    stack: ServiceStack, tmp_path: Path
) -> None:
    """A campaign file from a machine that does not share the server's files (a laptop and a
    cluster): its relative paths exist only in the server's working folder."""
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    path = laptop / "remote.yaml"
    path.write_text(stack.write_campaign("remote").read_text())  # data, specs/... relative
    client = stack.client()
    with pytest.raises(MlipilotError, match=r"PERMISSION_DENIED: .*data\.path") as err:
        client.create(path)  # resolved in laptop/, outside the server's data folders
    assert str(laptop) in str(err.value)
    campaign = client.create(path, paths_on_server=True)
    client.cancel(campaign.id)
    recorded = json.loads((stack.runs / campaign.id / "campaign.json").read_text())
    assert recorded["scorecard"] == str(stack.root / "specs" / "cu-emt-tiny.yaml")
    assert recorded["data"]["path"] == str(stack.root / "data")
