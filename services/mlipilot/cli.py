"""The ``mlipilot`` command line."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from mlipilot.cli_output import fail
from mlipilot.cluster.cli import cluster_app
from mlipilot.errors import MlipilotError

# mace imports set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD and e3nn then warns on every torch.load;
# loads this project makes itself pass weights_only explicitly. Keep the console readable.
warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
warnings.filterwarnings("ignore", message="The TorchScript type system")

app = typer.Typer(
    help="Auto-research for machine-learned interatomic potentials (MACE).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Generate and check training data.", no_args_is_help=True)
ledger_app = typer.Typer(help="Read a campaign's ledger.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(ledger_app, name="ledger")
app.add_typer(cluster_app, name="cluster")

DEFAULT_CAMPAIGN = Path("examples/cu-emt-quick.yaml")


def _repo_root() -> Path:
    # services/mlipilot/cli.py -> repository root (the package is installed editable).
    return Path(__file__).resolve().parents[2]


def resolve_campaign_file(path: Path | None) -> Path:
    """The given file, else the default campaign from the working directory or the repo."""
    if path is not None:
        return path
    for candidate in (DEFAULT_CAMPAIGN, _repo_root() / DEFAULT_CAMPAIGN):
        if candidate.exists():
            return candidate
    raise MlipilotError(
        f"no campaign file given and {DEFAULT_CAMPAIGN} not found here or in {_repo_root()}"
    )


@app.command()
def run(
    campaign_file: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Argument(help="campaign YAML (default: examples/cu-emt-quick.yaml)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for run results")] = Path("runs"),
    agent: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="override the campaign's agent: rule-based | random | optuna | llm | replay"
        ),
    ] = None,
    base_url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="llm agent: the OpenAI-compatible server, e.g. http://vllm:8000/v1"),
    ] = None,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="llm agent: the served model id, e.g. Qwen/Qwen3-32B"),
    ] = None,
    tool_mode: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="llm agent: tools | json_schema (servers without tool calling)"),
    ] = None,
    replay_ledger: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="replay agent: the run folder whose proposals are replayed"),
    ] = None,
    iterations: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="override the number of iterations after the baseline"),
    ] = None,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="go on with the unfinished campaign in this run folder (killed, interrupted)",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Run an auto-research campaign locally and print where the results are."""
    from mlipilot.config import load_campaign, override

    try:
        agent_settings = {
            "base_url": base_url,
            "model": model,
            "tool_mode": tool_mode,
            "ledger": replay_ledger,
        }
        given = any(v is not None for v in agent_settings.values())
        if resume is not None and (campaign_file or agent or iterations is not None or given):
            raise MlipilotError(
                "--resume goes on with the campaign as it was started: "
                "give no campaign file, --agent, agent setting or --iterations with it"
            )
        if resume is None:  # a bad file is refused before the (slow) torch and mace imports
            path = resolve_campaign_file(campaign_file)
            campaign, _ = load_campaign(path)
            campaign = override(campaign, agent=agent, iterations=iterations, **agent_settings)
        from mlipilot.campaign.console import RichReporter
        from mlipilot.campaign.loop import resume_campaign, run_campaign

        reporter = RichReporter()
        try:
            if resume is not None:
                resume_campaign(resume, reporter=reporter)
            else:
                run_campaign(campaign, path, out, reporter=reporter)
        finally:
            reporter.progress.stop()  # leave the terminal clean, also on failure
    except MlipilotError as exc:
        fail(exc)


@data_app.command("cu-emt")
def data_cu_emt(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("data/cu-emt"),
    seed: Annotated[int, typer.Option(help="random seed; same seed, same bytes")] = 0,
    n_train: Annotated[int, typer.Option(help="training frames")] = 96,
    n_test: Annotated[int, typer.Option(help="held-out test frames")] = 32,
    extra: Annotated[
        list[str] | None,
        typer.Option(
            help="FAMILY=N: N more training frames of hot_md, wide_strain, surface, "
            "short_pair or vacancy_strain (repeatable; the test split is unchanged)"
        ),
    ] = None,
) -> None:
    """Periodic fcc Cu supercells labelled with ASE's EMT (energy, forces, stress)."""
    from mlipilot.data.dataset import ensure_cu_emt

    try:
        extra_train = _family_counts(extra or [])
        ds = ensure_cu_emt(out, seed=seed, n_train=n_train, n_test=n_test, extra_train=extra_train)
    except MlipilotError as exc:
        fail(exc)
    for split, info in ds.manifest.splits.items():
        typer.echo(f"{split}: {ds.path(split)}  {info.n_frames} frames  sha256 {info.sha256}")


def _family_counts(items: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        family, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise MlipilotError(f"--extra {item!r}: expected FAMILY=N, e.g. surface=36")
        counts[family.strip()] = int(count)
    return counts


@data_app.command("check")
def data_check(files: list[Path]) -> None:
    """Validate extxyz files (energy/forces keys, shapes, finite values)."""
    from mlipilot.data.extxyz import load_extxyz

    for f in files:
        try:
            frames = load_extxyz(f)
        except MlipilotError as exc:
            fail(exc)
        typer.echo(f"{f}: {len(frames)} frames ok")


@data_app.command("qm7")
def data_qm7(
    level: Annotated[
        str, typer.Option(help="labels: 'b3lyp/6-31g*' (PySCF) or 'quick' (GFN2-xTB, tblite)")
    ],
    molecules: Annotated[int, typer.Option(help="first N molecules of the list")] = 200,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("data/qm7"),
    configs: Annotated[int, typer.Option(help="sampled configurations per molecule")] = 4,
    seed: Annotated[int, typer.Option(help="sampling and split seed")] = 0,
    test_fraction: Annotated[float, typer.Option(help="share of molecules held out")] = 0.2,
    molecule_list: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option(help="CSV id,smiles,heavy_atoms (default: the shipped QM7-like list)"),
    ] = None,
    backend: Annotated[str, typer.Option(help="serial | process | ray")] = "serial",
    workers: Annotated[int, typer.Option(help="process backend: worker processes")] = 2,
    ray_address: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="ray backend: 'local' (default) or a cluster address"),
    ] = None,
    rebuild: Annotated[
        bool, typer.Option(help="compute the labels even when a shipped data set matches")
    ] = False,
) -> None:
    """QM7-like molecules: sampled off-equilibrium geometries, labelled, split by molecule.

    Resumable: rerun the same command after a crash and finished labels are reused. A data set
    shipped with mlipilot for exactly these settings is unpacked instead (see --rebuild).
    """
    from mlipilot.data.molecules.fanout import BACKENDS
    from mlipilot.data.molecules.molecule_list import SHIPPED_LIST
    from mlipilot.data.molecules.qm7 import Execution, ensure_qm7

    try:
        if backend not in BACKENDS:
            raise MlipilotError(
                f"--backend: unknown backend {backend!r}; known: {', '.join(BACKENDS)}"
            )
        result = ensure_qm7(
            out,
            molecules=molecules,
            level=level,
            configs_per_molecule=configs,
            seed=seed,
            test_fraction=test_fraction,
            molecule_list=molecule_list or SHIPPED_LIST,
            execution=Execution(backend, workers, ray_address),  # type: ignore[arg-type]
            progress=typer.echo,
            use_shipped=not rebuild,
        )
    except MlipilotError as exc:
        fail(exc)
    ds, stats = result.dataset, result.stats
    for split, info in ds.manifest.splits.items():
        typer.echo(f"{split}: {ds.path(split)}  {info.n_frames} frames  sha256 {info.sha256}")
    typer.echo(f"level: {ds.manifest.params['level_description']}")
    typer.echo(f"labels_computed: {stats.labels_computed}")
    typer.echo(f"labels_reused: {stats.labels_reused}")
    typer.echo(f"failures: {ds.manifest.params['n_failures']} (see {ds.root / 'failures.json'})")
    if stats.label_seconds:
        mean = sum(stats.label_seconds) / len(stats.label_seconds)
        typer.echo(f"seconds_per_label: {mean:.3f}")


@ledger_app.command("export")
def ledger_export(
    run_dir: Path,
    out: Annotated[Optional[Path], typer.Option()] = None,  # noqa: UP045
) -> None:
    """Write the decisions of a run as TSV (default: <run>/results.tsv)."""
    from mlipilot.ledger import Ledger

    ledger_path = run_dir / "ledger.sqlite"
    if not ledger_path.exists():
        fail(MlipilotError(f"{ledger_path}: no ledger there"))
    target = out or run_dir / "results.tsv"
    with Ledger(ledger_path) as ledger:
        ledger.export_tsv(target)
    typer.echo(str(target))


@ledger_app.command("verify")
def ledger_verify(run_dir: Path) -> None:
    """Recompute the ledger's hash chain: exit 0 if every row is as written, else name the
    first row changed or missing and exit 1 (2: no readable ledger there)."""
    from mlipilot.ledger import BrokenChainError, check_chain

    ledger_path = run_dir / "ledger.sqlite"
    try:
        chain = check_chain(ledger_path)
    except BrokenChainError as exc:  # a finding about the ledger, not a usage error: exit 1
        fail(exc, code=1)
    except MlipilotError as exc:
        fail(exc)
    # The head can be kept elsewhere: a ledger rewritten with every later hash recomputed,
    # or cut short, no longer ends in it.
    typer.echo(f"ok: {chain.rows} rows, chain head {chain.head}")
    if chain.legacy_rows:
        typer.echo(
            f"unverified: the first {chain.legacy_rows} rows (written before the hash chain)"
        )


@app.command()
def report(run_dir: Path) -> None:
    """Write an HTML report of a run (<run>/report.html, figures in <run>/report/)."""
    from mlipilot.ledger import BrokenChainError
    from mlipilot.report import build_report

    try:
        path = build_report(run_dir)
    except BrokenChainError as exc:  # a tampered ledger is not reported on
        fail(exc, code=1)
    except MlipilotError as exc:
        fail(exc)
    typer.echo(str(path))


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="campaign run folders to rank")],
    out: Annotated[Path, typer.Option(help="HTML page to write")] = Path("compare.html"),
) -> None:
    """Rank campaigns side by side (same scorecard and test split) on one HTML page."""
    from mlipilot.report.compare import build_comparison

    try:
        path = build_comparison(run_dirs, out)
    except MlipilotError as exc:
        fail(exc)
    typer.echo(str(path))


@app.command()
def calibrate(
    campaign_file: Path,
    expert: Annotated[Path, typer.Option(help="the expert's recipe (YAML): examples/recipes/")],
    out: Annotated[Path, typer.Option(help="where the new scorecard version goes (YAML)")],
    margin: Annotated[
        float, typer.Option(help="the expert's headroom under each accuracy bound (0.25: 25 %)")
    ] = 0.25,
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="the new scorecard's name (default: the old one's)"),
    ] = None,
    work: Annotated[Path, typer.Option(help="folder for the two trainings")] = Path(
        "runs/calibration"
    ),
) -> None:
    """Propose scorecard thresholds for a campaign's data and budget: its baseline infeasible,
    an expert recipe feasible with MARGIN to spare (both trained and scored for real)."""
    import yaml

    from mlipilot.campaign.calibration import calibrate as run_calibration
    from mlipilot.config import load_campaign
    from mlipilot.recipe import recipe_from_mapping

    try:
        campaign, _ = load_campaign(campaign_file)
        recipe = recipe_from_mapping(yaml.safe_load(expert.read_text()), str(expert))
        calibration, measured = run_calibration(
            campaign, recipe, margin, out, work, name, say=typer.echo
        )
    except (MlipilotError, OSError, yaml.YAMLError) as exc:
        fail(MlipilotError(str(exc)))
    typer.echo(f"{'metric':32} {'baseline':>10} {'expert':>10}   bound (was)")
    for c in calibration.changes:
        typer.echo(
            f"{c.metric:32} {c.baseline:10.4g} {c.expert:10.4g}   {c.op} {c.new:.4g} ({c.old:.4g})"
        )
    typer.echo(f"baseline fails: {', '.join(calibration.baseline_violates)}")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in measured.train_seconds.items())
    version = f"{calibration.spec.name} v{calibration.spec.version}"
    typer.echo(f"wrote {out} ({version}); trained: {times}")


@app.command("validate")
def validate_model(
    model: Annotated[
        Path,
        typer.Argument(
            help="a model package (model-package.pt), or a candidate folder holding one "
            "(runs/<campaign>/candidates/<name>)"
        ),
    ],
    suite: Annotated[
        str, typer.Option(help="a suite of the repository's validation/ by name, or a file")
    ] = "cu-emt",
    out: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option(
            help="folder for validation.json, validation.html and validation/ (figures); "
            "default: the model's folder"
        ),
    ] = None,
    torch_threads: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="torch threads for the model (default: all cores)"),
    ] = None,
) -> None:
    """Check a model on physics the scorecard never sees, against the suite's reference (EMT
    for cu-emt, GFN2-xTB on held-out molecules for qm7). A report: exit 0 whether or not
    checks fail; 2 for a bad model or suite."""
    from mlipilot.validation.command import run_validation

    try:
        run_validation(model, suite, out, _repo_root() / "validation", torch_threads)
    except MlipilotError as exc:
        fail(exc)


@app.command()
def dashboard(
    runs: Annotated[Path, typer.Option(help="the runs folder: every campaign in it")] = Path(
        "runs"
    ),
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8050,
    token_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="bearer token file (else $MLIPILOT_TOKEN; neither: loopback only)"),
    ] = None,
) -> None:
    """A live view of the campaigns in RUNS in the browser (offline, read-only).

    With a token, open http://HOST:PORT/?token=TOKEN once; the browser keeps it as a cookie.
    """
    from mlipilot.dashboard.server import serve
    from mlipilot.rpc.auth import load_token

    try:
        token = load_token(token_file)
        shown = f"http://{host}:{port}/" + ("?token=..." if token else "")
        typer.echo(f"dashboard of {runs.resolve()} on {shown}")
        serve(runs, host, port, token)
    except (MlipilotError, ValueError) as exc:
        fail(MlipilotError(str(exc)))


def _register_service_commands() -> None:
    from mlipilot.cli_services import register

    register(app)


_register_service_commands()

if __name__ == "__main__":
    app()
