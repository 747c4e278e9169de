"""``mlipilot validate``: resolve its arguments, run the suite, print the table, write files."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlipilot.errors import MlipilotError
from mlipilot.model_files import PACKAGE_NAME
from mlipilot.validation.page import error_text, write_outputs
from mlipilot.validation.result import ValidationResult
from mlipilot.validation.run import package_calculator, validate
from mlipilot.validation.suite import find_suite, load_suite, suite_elements


def resolve_model(model: Path) -> Path:
    """A model package file, a candidate folder holding one, or a run folder: its final
    incumbent's package, as its ledger says."""
    if model.is_dir():
        if (model / PACKAGE_NAME).is_file():
            return model / PACKAGE_NAME
        if (model / "ledger.sqlite").exists():
            return _incumbent_package(model)
        raise MlipilotError(f"{model}: no {PACKAGE_NAME} in this folder")
    if not model.is_file():
        raise MlipilotError(f"{model}: no such model package")
    return model


def _incumbent_package(run: Path) -> Path:
    from mlipilot.report.data import header
    from mlipilot.report.ledger_view import load_run

    view = load_run(run)  # checks the ledger's hash chain too
    best = header(view).best_candidate
    if best is None:
        raise MlipilotError(f"{run}: the ledger names no incumbent yet (no scored candidate)")
    package = run / "candidates" / view.trained_candidate(best) / PACKAGE_NAME
    if not package.is_file():
        raise MlipilotError(f"{run}: the incumbent is {best}, but {package} is not there")
    return package


def checks_table(result: ValidationResult) -> Table:
    table = Table(title=f"validation: {result.suite.name} v{result.suite.version}")
    table.add_column("property", no_wrap=True)  # the numbers wrap in a narrow terminal
    for name in ("model", result.reference.who):
        table.add_column(name, justify="right")
    table.add_column("error", justify="right", no_wrap=True)
    table.add_column("tolerance")
    table.add_column("verdict", no_wrap=True)
    for c in result.checks:
        table.add_row(
            c.metric,
            "–" if c.value is None else f"{c.value:.4g}",
            "–" if c.reference is None else f"{c.reference:.4g}",
            escape(error_text(c)),
            escape(c.tolerance_text),
            "[green]pass[/]" if c.passed else "[red]FAIL[/]",
        )
    return table


def run_validation(
    model: Path, suite: str, out: Path | None, suites_dir: Path, torch_threads: int | None = None
) -> None:
    """The whole command; raises MlipilotError on bad input, before any long computation."""
    try:
        suite_path = find_suite(suite, suites_dir)
    except MlipilotError as exc:
        raise MlipilotError(f"--suite: {exc}") from None
    spec, sha = load_suite(suite_path)
    package = resolve_model(model)
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    factory = package_calculator(package, suite_elements(spec))
    err = Console(stderr=True)
    result = validate(
        factory,
        spec,
        sha256=sha,
        suite_file=str(suite_path),
        model=str(package),
        progress=lambda line: err.print(escape(line), highlight=False),
    )
    json_path, page = write_outputs(result, out if out is not None else package.parent)
    console = Console()
    console.print(checks_table(result))
    notes = dict.fromkeys((c.group, c.note) for c in result.checks if c.note and not c.passed)
    for group, note in notes:
        console.print(f"[yellow]{escape(group)}[/]: {escape(note)}", highlight=False)
    for note in result.model.notes:
        console.print(f"[yellow]left out[/]: {escape(note)}", highlight=False)
    passed = sum(c.passed for c in result.checks)
    console.print(f"passed: {passed} of {len(result.checks)}", highlight=False)
    console.print(
        f"wall_s: model {result.model.wall_s:.1f}, reference {result.reference.wall_s:.1f}",
        highlight=False,
    )
    console.print(f"json: {json_path}", highlight=False)
    console.print(f"page: {page}", highlight=False)
