"""Build ``<run>/report.html`` and its figures in ``<run>/report/`` from the run folder alone."""

from __future__ import annotations

from pathlib import Path

from mlipilot.report import data, figures
from mlipilot.report.html import FigureRef, render_page
from mlipilot.report.ledger_view import load_run

FIGURE_DIR = "report"
PAGE = "report.html"


def build_report(run_dir: Path) -> Path:
    """Write the campaign report of ``run_dir``; return the page's path.

    Raises ``MlipilotError`` for a folder without a ledger, a scorecard or any decision.
    """
    view = load_run(Path(run_dir))
    out = view.run_dir / FIGURE_DIR
    out.mkdir(exist_ok=True)
    md = data.md_figure(view)
    score = data.score_figure(view)
    seeds = sorted({len(p.noise.seeds) for p in score.points if p.noise is not None})
    drawn = [
        (
            "score.png",
            figures.draw_score(score),
            "Composite score and total violation",
            "Top: composite score (lower is better) of feasible candidates; bottom: total "
            "normalized violation of infeasible ones (symlog axis; 0 = feasible, dashed). "
            "Colour is the decision; the black step line is the incumbent after each decision; "
            "hatched columns are failed candidates."
            + (
                " Diamonds with bars: noise checks, the candidate (right, filled) and the "
                f"incumbent (left, open) re-scored over {'/'.join(map(str, seeds))} seeds, "
                "mean ± sample sd; the gain and spread are in the table below."
                if seeds
                else ""
            ),
        ),
        (
            "decisions.png",
            figures.draw_decisions(data.decision_figure(view)),
            "Decisions",
            "B baseline (grey), A accept (green), R revert (red), F failed candidate "
            "(black, hatched). The reason of each is in the table below.",
        ),
        (
            "constraints.png",
            figures.draw_constraints(data.constraint_figure(view)),
            "Constrained metrics against their thresholds",
            "One panel per scorecard constraint; dashed: the threshold; stars: candidates "
            "that became the incumbent (baseline and accepted).",
        ),
        (
            "md.png",
            figures.draw_md(md),
            "MD stability traces",
            "Replicas of the final incumbent "
            f"({data.iteration_label(md.incumbent_iteration, md.incumbent_candidate)}) and every "
            "failed replica of the campaign (red, x at the failure). Dotted: temperature "
            "runaway limits; dashed: the collapse distance."
            + (f" Traces not found: {', '.join(md.missing)}." if md.missing else ""),
        ),
    ]
    agreement = data.agreement_figure(view)
    if agreement is not None:
        disagree = "; ".join(f"{c}: {', '.join(f)}" for c, f in agreement.disagreements)
        drawn.append(
            (
                "agreement.png",
                figures.draw_agreement(agreement),
                "Scorecard against validation",
                "Each validated model (columns, with the scorecard's verdict) on each check of "
                "the validation suite (rows): green pass, red fail, grey not run. An accepted "
                "model with a red cell is a disagreement: the scorecard let through physics "
                "it never tests."
                + (f" Disagreements: {disagree}." if disagree else " No disagreement."),
            )
        )
    tokens = data.token_figure(view)
    if tokens.spent:  # agents without a model spend none; the header says so
        drawn.insert(
            1,
            (
                "tokens.png",
                figures.draw_tokens(tokens),
                "Score reached against LLM tokens spent",
                "Top: prompt and completion tokens of the agent's conversations per iteration "
                "(failed and refused proposals included), and the running total (black). "
                "Middle and bottom: the incumbent after each decision against the cumulative "
                "tokens spent before it (composite while feasible, total violation while "
                "infeasible, symlog); green dots: a candidate became the incumbent.",
            ),
        )
    refs = []
    for name, fig, title, caption in drawn:
        figures.save(fig, out / name)
        refs.append(FigureRef(f"{FIGURE_DIR}/{name}", title, caption))
    page = render_page(
        data.header(view),
        refs,
        data.recipe_diff(view),
        data.iteration_table(view),
        data.table_columns(view),
        data.validation_section(view),
    )
    path = view.run_dir / PAGE
    path.write_text(page, encoding="utf-8")
    return path
