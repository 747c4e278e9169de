"""Live progress and the final table of ``mlipilot run``, with rich."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mlipilot.campaign.reporting import IterationRow
from mlipilot.scoring.spec import load_spec, table_metrics

if TYPE_CHECKING:
    from mlipilot.campaign.layout import RunLayout
    from mlipilot.campaign.run_folder import CampaignOutcome
    from mlipilot.config import Campaign

_VERDICT_STYLE = {"ACCEPT": "bold green", "REVERT": "red", "BASELINE": "cyan"}
_STAGE_NAMES = {
    "train": "training (epochs)",
    "queued": "waiting for the scorecard (s)",
    "accuracy": "held-out accuracy",
    "short_range": "short-range repulsion",
    "md": "MD stability (steps)",
    "throughput": "throughput vs baseline",
}


class RichReporter:
    """One progress bar per candidate and stage; one line per decision."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[tuple[str, str], int] = {}
        self._columns: dict[str, str] = {}

    def campaign_started(self, campaign: Campaign, layout: RunLayout, agent: str) -> None:
        c = campaign
        self.console.print(
            f"[bold]mlipilot[/] campaign [bold]{c.name}[/] with agent [bold]{agent}[/]: "
            f"baseline + {c.budget.iterations} iterations, {c.budget.epochs} epochs per "
            f"candidate, scorecard {c.scorecard.name}, on {c.compute.device}"
        )
        self.console.print(f"results: {layout.root}")
        self._columns = table_metrics(load_spec(c.scorecard)[0])
        self.progress.start()

    def stage(self, candidate: str, stage: str, done: int, total: int) -> None:
        key = (candidate, stage)
        if key not in self._tasks:
            label = f"{candidate} {_STAGE_NAMES.get(stage, stage)}"
            self._tasks[key] = self.progress.add_task(label, total=total)
        self.progress.update(self._tasks[key], completed=done, total=total)

    def decision(self, row: IterationRow) -> None:
        # The candidate's bars are done: drop them so the live view stays one screen.
        name = row.candidate or f"it{row.iteration:03d}"
        for key in [k for k in self._tasks if k[0] == name]:
            self.progress.remove_task(self._tasks.pop(key))
        style = _VERDICT_STYLE.get(row.verdict, "")
        self.progress.console.print(
            f"{name} [{style}]{row.verdict}[/]: {escape(row.reason)}"
            + (f"  [dim]{escape(_changed(row))}[/]" if row.changed else "")
        )

    def note(self, message: str) -> None:
        self.progress.console.print(f"[yellow]{escape(message)}[/]")

    def campaign_finished(self, outcome: CampaignOutcome) -> None:
        self.progress.stop()
        self.console.print(iterations_table(outcome.rows, self._columns))
        layout = outcome.layout
        best = outcome.best_result
        self.console.print(
            f"best: iteration {outcome.best_iteration}, {best.short()}  "
            f"({outcome.wall_s / 60:.1f} min)"
        )
        self.console.print(f"best model: {layout.best_model}")
        self.console.print(escape(f"validated:  {validation_line(outcome)}"), highlight=False)
        self.console.print(f"ledger:     {layout.ledger}")
        self.console.print(f"results:    {layout.root}  (results.tsv, summary.json)")


def _changed(row: IterationRow) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.changed.items())


def iterations_table(rows: list[IterationRow], columns: dict[str, str]) -> Table:
    """The decisions, one row each; ``columns``: metric -> header (``table_metrics``)."""
    table = Table(title="iterations", show_lines=True)
    table.add_column("candidate", justify="right")
    table.add_column("hypothesis", max_width=42)
    table.add_column("changed", max_width=26)
    for header in columns.values():
        table.add_column(header, justify="right")
    table.add_column("composite", justify="right")
    table.add_column("decision")
    table.add_column("why", max_width=36)
    for row in rows:
        metrics = [_fmt(row.metrics.get(m)) for m in columns]
        if row.feasible is None:
            score = "—"
        elif row.feasible:
            score = f"{row.composite:.3f}"
        else:
            score = f"infeasible\n(viol. {row.violation:.2f})"
        style = _VERDICT_STYLE.get(row.verdict, "")
        table.add_row(
            row.candidate or str(row.iteration),
            escape(row.hypothesis),
            escape(_changed(row)) or "—",
            *metrics,
            score,
            f"[{style}]{row.verdict}[/]",
            escape(row.reason),
        )
    return table


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}"


def validation_line(outcome: CampaignOutcome) -> str:
    """Plainly, whether the best model holds up beyond the scorecard."""
    record = outcome.validation
    if record is None:
        return "no: accepted by the scorecard, not validated (the campaign names no suite)"
    if record.status == "error":
        return f"no: {record.reason}"
    verdict = "yes" if record.status == "passed" else "partly"
    return f"{verdict}: {record.reason} (validation.html in {record.candidate}'s folder)"
