"""``mlipilot serve`` and the client commands: submit, watch, list, get, cancel.

Kept apart from cli.py so the one-process commands do not import gRPC.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from mlipilot.cli_output import fail
from mlipilot.errors import MlipilotError

if TYPE_CHECKING:
    from mlipilot.rpc.orchestrator_client import OrchestratorClient
    from mlipilot.rpc.serving import ServerOptions
    from mlipilot.scoring.md_stability import ReplicaRunner
    from mlipilot.v1 import orchestrator_pb2

serve_app = typer.Typer(help="Run the orchestrator or scorecard as a gRPC service.")

Host = Annotated[
    str, typer.Option(help="address to listen on (0.0.0.0 in a container)", envvar="MLIPILOT_HOST")
]
TokenFile = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional on Python 3.10
    typer.Option(help="bearer token file (else $MLIPILOT_TOKEN; neither: no auth)"),
]
TlsCert = Annotated[Optional[Path], typer.Option(help="PEM certificate: serve TLS")]  # noqa: UP045
TlsKey = Annotated[Optional[Path], typer.Option(help="PEM private key of --tls-cert")]  # noqa: UP045
TlsCa = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(help="PEM CA certificate to verify a TLS server with", envvar="MLIPILOT_TLS_CA"),
]
MetricsPort = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(help="serve Prometheus /metrics on this HTTP port (behind the token, if any)"),
]
Insecure = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="listen beyond loopback without a token: anyone who reaches the port may use it",
    ),
]
Server = Annotated[
    str, typer.Option(help="orchestrator address host:port", envvar="MLIPILOT_SERVER")
]
DEFAULT_SERVER = "localhost:50051"


def _server_options(
    host: str,
    port: int,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    metrics_port: int | None,
    insecure: bool,
) -> ServerOptions:
    from mlipilot.rpc.auth import load_token
    from mlipilot.rpc.serving import ServerOptions

    return ServerOptions(
        host=host,
        port=port,
        token=load_token(token_file),
        tls_cert=tls_cert,
        tls_key=tls_key,
        metrics_port=metrics_port,
        insecure=insecure,
    )


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


@serve_app.command("scorecard")
def serve_scorecard(
    port: Annotated[int, typer.Option(help="gRPC port")] = 50052,
    host: Host = "127.0.0.1",
    scorecards: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="folder of scorecard specs (default: the repository's scorecard/)"),
    ] = None,
    concurrent: Annotated[int, typer.Option(min=1, help="evaluations run at once")] = 1,
    max_queued: Annotated[
        int, typer.Option(min=0, help="evaluations waiting for a slot; more are refused")
    ] = 8,
    read_root: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            help="folder (or s3://bucket/prefix) models and test splits may be read from; "
            "repeat for more (default: runs and data in the working folder)"
        ),
    ] = None,
    write_root: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            help="folder (or s3://bucket/prefix) MD traces may be written to; repeat for more "
            "(default: runs in the working folder)"
        ),
    ] = None,
    torch_threads: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="torch threads per evaluation (default: all cores)"),
    ] = None,
    ray_address: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="run each evaluation's MD replicas as tasks on this Ray cluster ('auto': "
            "RAY_ADDRESS's, ray://head:10001, host:port); default: in this process"
        ),
    ] = None,
    md_gpus: Annotated[
        str, typer.Option(help="GPUs per MD task on Ray: a number, or 'auto' (one if any)")
    ] = "auto",
    md_cpus: Annotated[float, typer.Option(min=0, help="CPUs per MD task on Ray")] = 1.0,
    token_file: TokenFile = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    metrics_port: MetricsPort = None,
    insecure: Insecure = False,
) -> None:
    """Serve the scorecard: Evaluate (progress stream), ListScorecards, GetScorecard."""
    from mlipilot.cli import _repo_root
    from mlipilot.rpc.artifacts import UriPolicy
    from mlipilot.rpc.scorecard_service import SERVICE_NAME, ScorecardServicer, load_catalog
    from mlipilot.rpc.serving import serve_until_signal, start_server
    from mlipilot.v1 import scorecard_pb2_grpc

    _logging()
    try:
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        catalog = load_catalog(scorecards or _repo_root() / "scorecard")
        uris = UriPolicy(read=read_root or ["runs", "data"], write=write_root or ["runs"])
        servicer = ScorecardServicer(
            catalog,
            uris,
            max_concurrent=concurrent,
            max_queued=max_queued,
            md_runner=_md_runner(ray_address, md_cpus, md_gpus),
        )
        options = _server_options(host, port, token_file, tls_cert, tls_key, metrics_port, insecure)
        running = start_server(
            options,
            lambda s: scorecard_pb2_grpc.add_ScorecardServiceServicer_to_server(servicer, s),
            [SERVICE_NAME],
        )
    except MlipilotError as exc:
        fail(exc)
    names = ", ".join(f"{e.spec.name} ({e.sha256[:12]})" for e in catalog.values())
    typer.echo(f"scorecard service on {host}:{running.port}: {names}", err=True)
    serve_until_signal(running)


def _md_runner(ray_address: str | None, cpus: float, gpus: str) -> ReplicaRunner:
    """MD replicas here, or (``--ray-address``) on the Ray cluster's workers, which share no
    folder with this pod: the model goes to them and the traces come back."""
    from mlipilot.scoring.md_stability import run_replicas_here

    if ray_address is None:
        return run_replicas_here
    from pydantic import ValidationError

    from mlipilot.config import RayResources
    from mlipilot.scoring.ray_md import RayReplicaRunner

    try:
        resources = RayResources(num_cpus=cpus, num_gpus=gpus if gpus == "auto" else float(gpus))
    except (ValueError, ValidationError) as exc:
        raise MlipilotError(f"--md-gpus: a number of GPUs or 'auto', got {gpus!r}") from exc
    # Joined at the first evaluation: the server starts, and serves its health, before the Ray
    # head is up (the usual order right after `helm install`).
    return RayReplicaRunner(resources, ship=True, connect=ray_address)


@serve_app.command("orchestrator")
def serve_orchestrator(
    port: Annotated[int, typer.Option(help="gRPC port")] = 50051,
    host: Host = "127.0.0.1",
    scorecard: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="scorecard service host:port (default: score in this process)"),
    ] = None,
    scorecard_tls_ca: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="PEM CA certificate of a TLS scorecard service"),
    ] = None,
    runs: Annotated[Path, typer.Option(help="folder of campaign run folders")] = Path("runs"),
    scorecards: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="the scorecard specs campaigns may name (default: the repository's)"),
    ] = None,
    data_root: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(help="folder campaigns' data may live in; repeat for more (default: data)"),
    ] = None,
    llm_endpoint: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="NAME=URL: a model server campaigns may name (agent.endpoint)"),
    ] = None,
    llm_key_env: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="NAME=VARIABLE: the environment variable with that endpoint's key"),
    ] = None,
    max_campaigns: Annotated[
        int, typer.Option(min=1, help="campaigns running at once; more are refused")
    ] = 4,
    token_file: TokenFile = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    metrics_port: MetricsPort = None,
    insecure: Insecure = False,
    grace: Annotated[float, typer.Option(help="seconds to wind down on SIGTERM")] = 30.0,
    resume: Annotated[
        bool,
        typer.Option(help="on start, resume the campaigns a killed or stopped server left"),
    ] = True,
    dashboard_port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="serve the live dashboard on this HTTP port (behind the token)"),
    ] = None,
) -> None:
    """Serve the orchestrator: create, get, list, watch and cancel campaigns."""
    from mlipilot.campaign.loop import local_scorer
    from mlipilot.cli import _repo_root
    from mlipilot.rpc.campaign_policy import CampaignPolicy, parse_endpoints
    from mlipilot.rpc.channel import open_channel
    from mlipilot.rpc.orchestrator_service import SERVICE_NAME, OrchestratorServicer
    from mlipilot.rpc.scorecard_client import RemoteScorerFactory
    from mlipilot.rpc.scorecard_service import load_catalog
    from mlipilot.rpc.serving import serve_until_signal, start_server
    from mlipilot.v1 import orchestrator_pb2_grpc
    from mlipilot.validation.suite import SUITES_DIR

    _logging()
    try:
        options = _server_options(host, port, token_file, tls_cert, tls_key, metrics_port, insecure)
        catalog = load_catalog(scorecards or _repo_root() / "scorecard")
        policy = CampaignPolicy(
            scorecards={name: entry.path for name, entry in catalog.items()},
            data_roots=data_root or [Path("data")],
            runs_root=runs,
            llm_endpoints=parse_endpoints(llm_endpoint or [], llm_key_env or []),
            validation_suites=sorted(p.stem for p in SUITES_DIR.glob("*.yaml")),
        )
        factory = local_scorer
        if scorecard:  # the same token guards both services
            channel = open_channel(scorecard, token=options.token, tls_ca=scorecard_tls_ca)
            factory = RemoteScorerFactory(channel)
        servicer = OrchestratorServicer(
            runs, policy, scorer_factory=factory, max_campaigns=max_campaigns
        )
        running = start_server(
            options,
            lambda s: orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, s),
            [SERVICE_NAME],
        )
        dashboard = None
        if dashboard_port is not None:
            dashboard = _start_dashboard(runs, dashboard_port, options)
    except MlipilotError as exc:
        fail(exc)
    scoring = f"scorecard service {scorecard}" if scorecard else "scoring in process"
    typer.echo(f"orchestrator on {host}:{running.port}, runs in {runs}, {scoring}", err=True)
    if dashboard is not None:
        typer.echo(f"dashboard on {host}:{dashboard.port}", err=True)
    if resume:
        for campaign_id in servicer.resume_unfinished():
            typer.echo(f"resumed campaign {campaign_id}", err=True)
    serve_until_signal(running, on_shutdown=lambda: servicer.shutdown(grace), grace_s=grace)


def _start_dashboard(runs: Path, port: int, options: ServerOptions):
    """The live dashboard beside the gRPC server: same host, token and TLS certificate."""
    import ssl

    from mlipilot.dashboard.server import start_in_thread

    context = None
    if options.tls_cert is not None and options.tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(options.tls_cert, options.tls_key)
    try:
        return start_in_thread(
            runs,
            options.host,
            port,
            options.token,
            ssl_context=context,
            insecure=options.insecure,
        )
    except ValueError as exc:
        raise MlipilotError(str(exc)) from exc


def _client(server: str, token_file: Path | None, tls_ca: Path | None) -> OrchestratorClient:
    from mlipilot.rpc.auth import load_token
    from mlipilot.rpc.channel import open_channel
    from mlipilot.rpc.orchestrator_client import OrchestratorClient

    channel = open_channel(server, token=load_token(token_file), tls_ca=tls_ca)
    return OrchestratorClient(channel, server)


def _show(campaign: orchestrator_pb2.Campaign) -> None:
    from mlipilot.rpc.convert import status_name

    result = campaign.incumbent_result
    best = "—"
    if campaign.HasField("incumbent_result"):
        best = f"it{campaign.incumbent_iteration:03d}: " + (
            f"feasible, composite {result.composite:.3f}" if result.feasible else "infeasible"
        )
    typer.echo(f"id:         {campaign.id}")
    typer.echo(f"name:       {campaign.name}")
    typer.echo(f"status:     {status_name(campaign.status)}  {campaign.status_reason}".rstrip())
    typer.echo(f"agent:      {campaign.agent}")
    typer.echo(f"iterations: {campaign.iterations_decided} of {campaign.iterations_budget + 1}")
    typer.echo(f"incumbent:  {best}")
    typer.echo(f"run:        {campaign.run_uri}")
    typer.echo(f"last event: {campaign.last_sequence}")


def register(app: typer.Typer) -> None:
    """Add ``serve`` and the client commands to the main ``mlipilot`` app."""
    app.add_typer(serve_app, name="serve")

    @app.command()
    def submit(
        campaign_file: Path,
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
        paths_on_server: Annotated[
            bool,
            typer.Option(
                help="resolve the file's relative paths (data, scorecard) in the server's "
                "working folder, for a server that does not share this file system (a cluster)"
            ),
        ] = False,
    ) -> None:
        """Start a campaign on an orchestrator service; prints its id."""
        try:
            client = _client(server, token_file, tls_ca)
            campaign = client.create(campaign_file, paths_on_server=paths_on_server)
        except MlipilotError as exc:
            fail(exc)
        typer.echo(campaign.id)

    @app.command()
    def watch(
        campaign_id: str,
        server: Server = DEFAULT_SERVER,
        after: Annotated[int, typer.Option(help="show events after this sequence number")] = 0,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
    ) -> None:
        """Print a campaign's events, live, until it ends (resumes after a dropped link)."""
        from mlipilot.rpc.orchestrator_client import describe_event

        try:
            for event in _client(server, token_file, tls_ca).watch(campaign_id, after=after):
                typer.echo(describe_event(event))
        except MlipilotError as exc:
            fail(exc)

    @app.command("fetch")
    def fetch_artifact(
        campaign_id: str,
        artifact: Annotated[str, typer.Argument(help="report | model | ledger")],
        out: Annotated[Path, typer.Option(help="folder to write it into")] = Path("."),
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
    ) -> None:
        """Download a campaign's report, best model or ledger from an orchestrator service."""
        try:
            path = _client(server, token_file, tls_ca).fetch(campaign_id, artifact, out)
        except MlipilotError as exc:
            fail(exc)
        typer.echo(path)

    @app.command("list")
    def list_campaigns(
        server: Server = DEFAULT_SERVER, token_file: TokenFile = None, tls_ca: TlsCa = None
    ) -> None:
        """The campaigns an orchestrator service knows, newest first."""
        from mlipilot.rpc.convert import status_name

        try:
            campaigns = _client(server, token_file, tls_ca).list()
        except MlipilotError as exc:
            fail(exc)
        table = Table("id", "status", "agent", "iterations", "incumbent")
        for c in campaigns:
            best = f"it{c.incumbent_iteration:03d}" if c.HasField("incumbent_result") else "—"
            done = f"{c.iterations_decided}/{c.iterations_budget + 1}"
            table.add_row(c.id, status_name(c.status), c.agent, done, best)
        Console().print(table)

    @app.command()
    def get(
        campaign_id: str,
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
    ) -> None:
        """One campaign's status, progress and incumbent."""
        try:
            _show(_client(server, token_file, tls_ca).get(campaign_id))
        except MlipilotError as exc:
            fail(exc)

    @app.command()
    def cancel(
        campaign_id: str,
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
    ) -> None:
        """Stop a running campaign; its ledger records it as cancelled."""
        try:
            _show(_client(server, token_file, tls_ca).cancel(campaign_id))
        except MlipilotError as exc:
            fail(exc)
