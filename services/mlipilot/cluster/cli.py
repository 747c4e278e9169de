"""``mlipilot cluster``: the deployment on Kubernetes, as its users and its probes see it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlipilot.cli_output import fail
from mlipilot.errors import MlipilotError

cluster_app = typer.Typer(
    help="The Kubernetes deployment (Helm chart charts/mlipilot): status and gRPC health.",
    no_args_is_help=True,
)


@cluster_app.command("status")
def status(
    namespace: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Option("--namespace", "-n", help="namespace (default: the context's or the pod's)"),
    ] = None,
    release: Annotated[str, typer.Option(help="the Helm release name")] = "mlipilot",
    kubeconfig: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)"),
    ] = None,
    context: Annotated[Optional[str], typer.Option(help="kubeconfig context")] = None,  # noqa: UP045
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Services ready, RayCluster and GPU workers, vLLM's model, scorecard health.

    Exit status 0 when every part is ready, 1 when one is not, 2 on an error.
    """
    from mlipilot.cluster.kube import ClusterReader, connect
    from mlipilot.cluster.status import collect_status

    try:
        connection = connect(kubeconfig, context)
        ns = namespace or connection.namespace
        result = collect_status(ClusterReader(connection), ns, release)
    except MlipilotError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        table = Table("component", "object", "ready", "status", title=f"{release} in {ns}")
        for check in result.checks:
            mark = "[green]yes[/]" if check.ready else "[bold red]no[/]"
            table.add_row(check.component, check.object, mark, escape(check.summary))
        Console(width=160).print(table)
    raise typer.Exit(code=0 if result.healthy else 1)


@cluster_app.command("grpc-health")
def grpc_health(
    target: Annotated[str, typer.Argument(help="host:port of an mlipilot gRPC service")],
    service: Annotated[
        str, typer.Option(help="service name, e.g. mlipilot.v1.ScorecardService; '': the server")
    ] = "",
    tls_ca: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="PEM CA certificate: connect with TLS"),
    ] = None,
    tls_server_name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="name the server's certificate must carry, when not the target's"),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for the answer")] = 5.0,
) -> None:
    """Ask a service's grpc.health.v1 status; exit 0 only when SERVING."""
    from mlipilot.cluster.grpc_health import check_health

    try:
        answer = check_health(
            target, service, tls_ca=tls_ca, server_name=tls_server_name, timeout_s=timeout
        )
    except MlipilotError as exc:
        fail(exc)
    typer.echo(f"{target} {service or '(server)'}: {answer}")
    raise typer.Exit(code=0 if answer == "SERVING" else 1)
