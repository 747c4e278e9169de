"""The report's figures, drawn with matplotlib (Agg, no display) from the data in ``data``."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter

from mlipilot.report.data import (
    DECISION_COLORS,
    AgreementFigure,
    ConstraintFigure,
    DecisionFigure,
    IncumbentStep,
    MDFigure,
    NoiseCheck,
    ScoreFigure,
    TokenFigure,
    TokenScorePoint,
)

DPI = 130
# Incumbent replicas: no red, which marks failed replicas.
INCUMBENT_COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:cyan", "tab:olive")


def nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def violation_limits(values: Sequence[float | None]) -> tuple[float, float]:
    """Y limits of a symlog violation panel: from just below 0 to twice the largest."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return -0.02, max([1.0, *finite]) * 2


def iteration_axis(ax: plt.Axes, iterations: list[int]) -> None:
    if iterations:
        ax.set_xticks(iterations)
        ax.set_xlim(min(iterations) - 0.6, max(iterations) + 0.6)
    ax.grid(True, alpha=0.3)


# Noise checks: where the would-be winner and the incumbent sit beside the decision's column.
NOISE_OFFSET = 0.18


def thousands(axis: Axis) -> None:
    """Token counts with thousands separators (12,000 rather than 1.2e4)."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _draw_noise(ax: plt.Axes, x: float, noise: NoiseCheck, color: str) -> None:
    """Mean +- sd over the seeds: the candidate right of its column, the incumbent left."""
    for side, scores, face in ((+1, noise.candidate, color), (-1, noise.incumbent, "white")):
        mean, sd = scores.mean, scores.sd
        if mean is None:
            continue
        ax.errorbar(
            x + side * NOISE_OFFSET,
            mean,
            yerr=sd or 0.0,
            fmt="D",
            ms=5,
            color=color if side > 0 else "black",
            mfc=face,
            capsize=3,
            lw=1.2,
            zorder=4,
        )


def draw_score(data: ScoreFigure) -> Figure:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True)
    its = [p.iteration for p in data.points]
    for p in data.points:
        if p.failed:
            for ax in (top, bottom):
                ax.axvspan(p.iteration - 0.3, p.iteration + 0.3, color="0.85", hatch="//")
            continue
        color = DECISION_COLORS.get(p.decision, "#bbbbbb")
        if p.feasible:
            top.scatter(p.iteration, nan_if_none(p.composite), color=color, s=40, zorder=3)
        else:
            bottom.scatter(p.iteration, nan_if_none(p.violation), color=color, s=40, zorder=3)
        if p.noise is not None:
            _draw_noise(
                top if p.noise.metric == "composite" else bottom, p.iteration, p.noise, color
            )
    # The incumbent after each decision: on the composite panel while it is feasible, on the
    # violation panel while it is not.
    xs = [s.iteration for s in data.incumbent]
    top.step(
        xs,
        [nan_if_none(s.composite) if s.feasible else math.nan for s in data.incumbent],
        where="post",
        color="black",
        lw=1.5,
        label="incumbent",
    )
    bottom.step(
        xs,
        [nan_if_none(s.violation) if s.feasible is False else math.nan for s in data.incumbent],
        where="post",
        color="black",
        lw=1.5,
        label="incumbent",
    )
    bottom.axhline(
        data.feasibility_threshold, color="tab:blue", ls="--", lw=1, label="feasible (violation 0)"
    )
    bottom.set_yscale("symlog", linthresh=0.1)
    bottom.set_ylim(*violation_limits([p.violation for p in data.points if p.feasible is False]))
    top.set_ylabel("composite (feasible)\nlower is better")
    bottom.set_ylabel("total violation\n(infeasible)")
    bottom.set_xlabel("iteration")
    iteration_axis(top, its)
    iteration_axis(bottom, its)
    handles = [Patch(color=DECISION_COLORS[k], label=k) for k in ("BASELINE", "ACCEPT", "REVERT")]
    handles.append(Patch(facecolor="0.85", hatch="//", label="failed"))
    if any(p.noise is not None for p in data.points):
        handles.append(_noise_handle("candidate: seed mean ± sd", "0.3", "0.3"))
        handles.append(_noise_handle("incumbent: seed mean ± sd", "black", "white"))
    # Above the panel: with the noise entries the legend would hide points inside it.
    top.legend(
        handles=[*handles, *top.get_legend_handles_labels()[0]],
        fontsize=8,
        ncol=4,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.01),
    )
    bottom.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _noise_handle(label: str, color: str, face: str) -> Line2D:
    return Line2D([], [], marker="D", ms=5, color=color, mfc=face, ls="-", lw=1.2, label=label)


def incumbent_panels(
    top: plt.Axes,
    bottom: plt.Axes,
    xs: Sequence[float],
    steps: Sequence[IncumbentStep | TokenScorePoint],
    label: str,
    **style: Any,
) -> None:
    """The incumbent as a step line: composite on ``top`` while it is feasible, violation on
    ``bottom`` while it is not (``steps`` carry ``feasible``, ``composite``, ``violation``)."""
    top.step(
        xs,
        [nan_if_none(s.composite) if s.feasible else math.nan for s in steps],
        where="post",
        label=label,
        **style,
    )
    bottom.step(
        xs,
        [nan_if_none(s.violation) if s.feasible is False else math.nan for s in steps],
        where="post",
        label=label,
        **style,
    )


def draw_tokens(data: TokenFigure) -> Figure:
    """Top: LLM tokens per iteration (prompt and completion stacked) and their running total.
    Below: the incumbent's score against the cumulative tokens spent before each decision."""
    fig, (per_it, top, bottom) = plt.subplots(
        3, 1, figsize=(7.5, 7.5), gridspec_kw={"height_ratios": [1.0, 1.2, 1.0]}
    )
    top.sharex(bottom)  # both score panels on the tokens axis, labelled once
    top.tick_params(labelbottom=False)
    its = [t.iteration for t in data.iterations]
    prompt = [t.prompt_tokens for t in data.iterations]
    per_it.bar(its, prompt, width=0.6, color="tab:blue", label="prompt")
    per_it.bar(
        its,
        [t.completion_tokens for t in data.iterations],
        width=0.6,
        bottom=prompt,
        color="tab:orange",
        label="completion",
    )
    per_it.plot(
        its,
        [t.cumulative_tokens for t in data.iterations],
        "o-",
        color="black",
        ms=4,
        lw=1.2,
        label="cumulative",
    )
    per_it.set_ylabel("LLM tokens")
    per_it.set_xlabel("iteration")
    iteration_axis(per_it, its)
    thousands(per_it.yaxis)
    per_it.legend(fontsize=8, loc="upper left")
    per_it.set_title(
        f"{data.agent}: {data.total_tokens:,} tokens in {data.calls} conversation(s)", fontsize=10
    )
    # The score reached for the tokens spent: the last step runs on to the total, so tokens
    # spent after the last decision (a failed or refused proposal) show as a flat tail.
    steps = list(data.incumbent)
    xs: list[float] = [float(p.tokens) for p in steps]
    if steps and data.total_tokens > steps[-1].tokens:
        steps.append(steps[-1])
        xs.append(float(data.total_tokens))
    incumbent_panels(top, bottom, xs, steps, "incumbent", color="black", lw=1.5)
    for p in data.incumbent:
        feasible = p.feasible is True
        ax = top if feasible else bottom
        y = p.composite if feasible else p.violation
        if p.incumbent_candidate == p.candidate and y is not None:
            ax.scatter(p.tokens, y, color=DECISION_COLORS["ACCEPT"], s=36, zorder=3)
            ax.annotate(
                p.candidate, (p.tokens, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    if not any(p.feasible for p in data.incumbent):
        top.text(0.5, 0.5, "no feasible incumbent", ha="center", transform=top.transAxes)
    bottom.axhline(0.0, color="tab:blue", ls="--", lw=1, label="feasible (violation 0)")
    bottom.set_yscale("symlog", linthresh=0.1)
    bottom.set_ylim(*violation_limits([p.violation for p in data.incumbent if p.feasible is False]))
    top.set_ylabel("incumbent composite\n(feasible, lower is better)")
    bottom.set_ylabel("incumbent total violation\n(infeasible)")
    bottom.set_xlabel("cumulative LLM tokens spent (prompt + completion)")
    top.scatter([], [], color=DECISION_COLORS["ACCEPT"], s=36, label="new incumbent")
    for ax in (top, bottom):
        ax.set_xlim(left=-0.02 * max(1, data.total_tokens), right=max(1, data.total_tokens) * 1.08)
        thousands(ax.xaxis)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def draw_decisions(data: DecisionFigure) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 1.9))
    # Several candidates in one iteration share its column, side by side in ledger order.
    per_iteration = Counter(bar.iteration for bar in data.bars)
    placed: Counter[int] = Counter()
    for bar in data.bars:
        n, i = per_iteration[bar.iteration], placed[bar.iteration]
        placed[bar.iteration] += 1
        width = 0.8 / n
        x = bar.iteration + width * (i - (n - 1) / 2)
        ax.bar(
            x,
            1.0,
            width=width,
            color=bar.color,
            hatch="//" if bar.failed else None,
            edgecolor="white" if bar.failed else bar.color,
        )
        ax.text(x, 0.5, bar.category[0], ha="center", va="center", color="white", size=9)
    ax.set_yticks([])
    ax.set_xlabel("iteration")
    iteration_axis(ax, [b.iteration for b in data.bars])
    ax.grid(False)
    handles = [Patch(color=DECISION_COLORS[k], label=k) for k in ("BASELINE", "ACCEPT", "REVERT")]
    handles.append(Patch(facecolor="black", edgecolor="white", hatch="//", label="failed"))
    ax.legend(handles=handles, fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, 1.45))
    fig.tight_layout()
    return fig


def draw_constraints(data: ConstraintFigure) -> Figure:
    n = max(1, len(data.panels))
    cols = min(2, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols, 2.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, data.panels, strict=False):
        its = [p.iteration for p in panel.points]
        ax.plot(its, [p.value for p in panel.points], "o-", color="tab:blue", ms=4, lw=1)
        acc = [p for p in panel.points if p.accepted]
        ax.scatter(
            [p.iteration for p in acc],
            [p.value for p in acc],
            marker="*",
            s=120,
            color=DECISION_COLORS["ACCEPT"],
            zorder=3,
            label="became incumbent",
        )
        ax.axhline(panel.threshold, color="tab:red", ls="--", lw=1, label=f"{panel.op} threshold")
        ax.set_title(f"{panel.metric} {panel.op} {panel.threshold:g}", fontsize=9)
        ax.set_ylabel(panel.unit, fontsize=8)
        ax.set_xlabel("iteration", fontsize=8)
        iteration_axis(ax, its)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(data.panels) :]:
        ax.set_visible(False)
    if data.panels:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw_md(data: MDFigure) -> Figure:
    fig, (t_ax, e_ax, d_ax) = plt.subplots(3, 1, figsize=(7.5, 7.5), sharex=True)
    n_incumbent = 0
    for trace in data.traces:
        incumbent = trace.role == "incumbent"
        style = {"lw": 1.6 if incumbent else 0.8, "alpha": 1.0 if incumbent else 0.5}
        color = "tab:red"
        if incumbent:
            color = INCUMBENT_COLORS[n_incumbent % len(INCUMBENT_COLORS)]
            n_incumbent += 1
        label = f"incumbent {trace.name} {trace.replica} ({trace.status})" if incumbent else None
        (line,) = t_ax.plot(trace.time_ps, trace.temperature_K, color=color, label=label, **style)
        e0 = trace.total_eV[0] if trace.total_eV else 0.0
        e_ax.plot(trace.time_ps, [e - e0 for e in trace.total_eV], color=line.get_color(), **style)
        d_ax.plot(trace.time_ps, trace.min_distance_A, color=line.get_color(), **style)
        if not incumbent and trace.time_ps:
            for ax, ys in ((t_ax, trace.temperature_K), (d_ax, trace.min_distance_A)):
                ax.plot(trace.time_ps[-1], ys[-1], "x", color="tab:red", ms=6)
    for temp in data.target_temperatures_K:
        t_ax.axhline(temp * data.runaway_factor, color="0.5", ls=":", lw=0.8)
    d_ax.axhline(
        data.min_distance_threshold_A,
        color="black",
        ls="--",
        lw=1,
        label=f"collapse below {data.min_distance_threshold_A:g} Å",
    )
    if any(t.role == "failed" for t in data.traces):
        t_ax.plot([], [], color="tab:red", lw=0.8, label="failed replicas (x: failure)")
    t_ax.set_ylabel("temperature (K)")
    e_ax.set_ylabel("E_total − E_total(0) (eV)")
    d_ax.set_ylabel("min distance (Å)")
    d_ax.set_xlabel("time (ps)")
    for ax in (t_ax, e_ax, d_ax):
        ax.grid(True, alpha=0.3)
    if t_ax.get_legend_handles_labels()[0]:
        t_ax.legend(fontsize=6, loc="upper left")
    d_ax.legend(fontsize=7, loc="lower left")
    if not data.traces:
        t_ax.text(0.5, 0.5, "no MD traces found", ha="center", transform=t_ax.transAxes)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def draw_agreement(data: AgreementFigure) -> Figure:
    """Validation checks (rows) of each validated model (columns): green pass, red fail, grey
    not run; a column's label says whether the scorecard accepted it."""
    n_checks, n_models = len(data.checks), len(data.candidates)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.9 * n_models), 1.0 + 0.28 * n_checks))
    colors = {True: "#2ca02c", False: "#d62728", None: "#cccccc"}
    for i, row in enumerate(data.passed):
        for j, ok in enumerate(row):
            ax.add_patch(Rectangle((j, n_checks - 1 - i), 0.95, 0.9, color=colors[ok], linewidth=0))
    ax.set_xlim(0, n_models)
    ax.set_ylim(0, n_checks)
    ax.set_xticks([j + 0.475 for j in range(n_models)])
    labels = [
        f"{c}\n{'accepted' if a else 'not accepted'}"
        for c, a in zip(data.candidates, data.accepted, strict=True)
    ]
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_yticks([n_checks - 1 - i + 0.45 for i in range(n_checks)])
    ax.set_yticklabels(data.checks, fontsize=7)
    ax.grid(False)
    accepts = sum(data.accepted)
    ax.set_title(
        f"scorecard accepts confirmed by validation: {data.confirmed} of {accepts}", fontsize=9
    )
    fig.tight_layout()
    return fig
