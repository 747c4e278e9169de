"""Both mlipilot services, real, on loopback ports, wired as in a deployment.

The scorecard service holds the tiny scorecard; the orchestrator scores through it over gRPC;
both demand the same bearer token and serve Prometheus metrics.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from factories import BAD_BASELINE, TINY_SPEC
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mlipilot.rpc.artifacts import UriPolicy
from mlipilot.rpc.campaign_policy import CampaignPolicy
from mlipilot.rpc.channel import open_channel
from mlipilot.rpc.orchestrator_client import OrchestratorClient
from mlipilot.rpc.orchestrator_service import SERVICE_NAME as ORCHESTRATOR
from mlipilot.rpc.orchestrator_service import OrchestratorServicer
from mlipilot.rpc.scorecard_client import RemoteScorerFactory
from mlipilot.rpc.scorecard_service import SERVICE_NAME as SCORECARD
from mlipilot.rpc.scorecard_service import ScorecardServicer, load_catalog
from mlipilot.rpc.serving import RunningServer, ServerOptions, start_server
from mlipilot.v1 import orchestrator_pb2_grpc, scorecard_pb2_grpc

TOKEN = "campaign-token"


def field_violations(exc: grpc.RpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest details an error must carry."""
    status = rpc_status.from_call(exc)
    assert status is not None, "INVALID_ARGUMENT should carry google.rpc.BadRequest details"
    fields = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad)
        fields += [v.field for v in bad.field_violations]
    return fields


@dataclass
class ServiceStack:
    root: Path
    scorecard: RunningServer
    orchestrator: RunningServer
    servicer: OrchestratorServicer
    scorecard_servicer: ScorecardServicer

    @property
    def runs(self) -> Path:
        return self.servicer.runs_root

    def address(self, server: RunningServer) -> str:
        return f"127.0.0.1:{server.port}"

    def channel(self, server: RunningServer, token: str | None = TOKEN) -> grpc.Channel:
        return open_channel(self.address(server), token=token)

    def channel_to(self, address: str, token: str | None = TOKEN) -> grpc.Channel:
        return open_channel(address, token=token)

    def client(self, token: str | None = TOKEN) -> OrchestratorClient:
        server = self.address(self.orchestrator)
        return OrchestratorClient(self.channel(self.orchestrator, token), server)

    def scorecard_stub(self, token: str | None = TOKEN) -> scorecard_pb2_grpc.ScorecardServiceStub:
        return scorecard_pb2_grpc.ScorecardServiceStub(self.channel(self.scorecard, token))

    def metric(self, server: RunningServer, sample: str) -> float:
        """The value of one Prometheus sample line (e.g. 'x_total{a="b"}'), 0 when absent."""
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(sample + " "):
                    return float(line.split()[-1])
        return 0.0

    def write_campaign(self, name: str, **budget: object) -> Path:
        """A tiny campaign file beside the shared data folder, scored by the service's spec."""
        campaign = {
            "name": name,
            "data": {"kind": "cu-emt", "path": "data", "seed": 0, "n_train": 16, "n_test": 8},
            "scorecard": "specs/cu-emt-tiny.yaml",
            "baseline": BAD_BASELINE,
            "agent": {"kind": "rule-based"},
            "budget": {"iterations": 2, "epochs": 3, "max_train_seconds": 300, **budget},
            "compute": {"torch_threads": 1},
        }
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(campaign))
        return path

    def stop(self) -> None:
        self.servicer.shutdown(grace_s=30)
        self.orchestrator.stop(grace_s=1)
        self.scorecard.stop(grace_s=1)


def serve_orchestrator(
    servicer: OrchestratorServicer, options: ServerOptions | None = None
) -> RunningServer:
    """An orchestrator of the test's own (another policy, scorer or limits) on loopback."""
    return start_server(
        options or ServerOptions(),
        lambda s: orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, s),
        [ORCHESTRATOR],
    )


def serve_scorecard(
    servicer: ScorecardServicer, options: ServerOptions | None = None
) -> RunningServer:
    """A scorecard service of the test's own on loopback."""
    return start_server(
        options or ServerOptions(),
        lambda s: scorecard_pb2_grpc.add_ScorecardServiceServicer_to_server(servicer, s),
        [SCORECARD],
    )


def start_stack(root: Path) -> ServiceStack:
    specs = root / "specs"
    specs.mkdir(parents=True)
    (specs / "cu-emt-tiny.yaml").write_text(yaml.safe_dump(TINY_SPEC))
    catalog = load_catalog(specs)
    # The roots a deployment gives both services: runs (models, traces) and data.
    uris = UriPolicy(read=[root / "runs", root / "data"], write=[root / "runs"])
    scoring = ScorecardServicer(catalog, uris)
    scorecard = start_server(
        ServerOptions(token=TOKEN, metrics_port=0),
        lambda s: scorecard_pb2_grpc.add_ScorecardServiceServicer_to_server(scoring, s),
        [SCORECARD],
    )
    remote = RemoteScorerFactory(open_channel(f"127.0.0.1:{scorecard.port}", token=TOKEN))
    policy = CampaignPolicy(
        scorecards={name: entry.path for name, entry in catalog.items()},
        data_roots=[root / "data"],
        runs_root=root / "runs",
    )
    servicer = OrchestratorServicer(root / "runs", policy, scorer_factory=remote, base_dir=root)
    orchestrator = start_server(
        ServerOptions(token=TOKEN, metrics_port=0),
        lambda s: orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, s),
        [ORCHESTRATOR],
    )
    return ServiceStack(root, scorecard, orchestrator, servicer, scoring)
