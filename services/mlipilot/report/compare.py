"""Rank several campaigns side by side (typically one per agent) on one static offline page.

Built from the run folders alone, through the single-campaign report's ``load_run`` and data
functions. Campaigns are only ranked against the same scorecard and the same test split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mlipilot.errors import MlipilotError
from mlipilot.report import data, figures
from mlipilot.report.colors import campaign_color
from mlipilot.report.html import CSS, FigureRef, figure_html, fmt
from mlipilot.report.ledger_view import RunView, load_run

FIGURE = "incumbents.png"
TOKENS_FIGURE = "tokens.png"
RANKING_FIGURE = "ranking.png"


@dataclass(frozen=True)
class RankRow:
    rank: int
    campaign: str  # the run folder's name
    agent: str
    spec_name: str
    spec_hash: str
    feasible: bool | None  # of the final incumbent; None when nothing was ever scored
    composite: float | None
    violation: float | None
    first_feasible_iteration: int | None  # where the incumbent first became feasible
    iterations_done: int
    accepted: int
    counts: data.Counts
    wall_s: float | None
    tokens: int = 0  # LLM tokens (prompt + completion) of all the agent's conversations
    llm_calls: int = 0  # 0: an agent without a model (rule-based, random, optuna)

    @property
    def score(self) -> float | None:
        """The number the rank is decided on: composite if feasible, else violation."""
        return self.composite if self.feasible else self.violation


def check_comparable(views: Sequence[RunView]) -> None:
    """Refuse campaigns scored against different scorecards or different test splits."""
    if not views:
        raise MlipilotError("nothing to compare: give at least one run folder")
    first = views[0]
    first_test = data.header(first).test_hash
    for other in views[1:]:
        if other.spec_hash != first.spec_hash:
            raise MlipilotError(
                f"cannot rank {first.run_dir} and {other.run_dir}: different scorecards "
                f"(spec sha256 {first.spec_hash} vs {other.spec_hash})"
            )
        other_test = data.header(other).test_hash
        if other_test != first_test:
            raise MlipilotError(
                f"cannot rank {first.run_dir} and {other.run_dir}: different test splits "
                f"(test hash {first_test} vs {other_test})"
            )


def _sort_key(row: RankRow) -> tuple[int, float, int, str]:
    # The decision rule across campaigns: feasible before infeasible, then the lower composite
    # (feasible) or violation (infeasible); a campaign with nothing scored comes last. The
    # same score for fewer LLM tokens is the better result.
    score = row.score
    return (
        0 if row.feasible else 1,
        math.inf if score is None else score,
        row.tokens,
        row.campaign,
    )


def ranking(views: Sequence[RunView]) -> list[RankRow]:
    """One row per campaign, best first; raises ``MlipilotError`` if they are not comparable."""
    check_comparable(views)
    rows = []
    for view in views:
        h = data.header(view)
        steps = data.incumbent_steps(view)
        first_feasible = next((s.iteration for s in steps if s.feasible), None)
        accepted = sum(
            1 for d in view.decisions if d.decision == "ACCEPT" and data.is_incumbent_change(d)
        )
        rows.append(
            RankRow(
                rank=0,
                campaign=h.run,
                agent=h.agent,
                spec_name=h.spec_name,
                spec_hash=h.spec_hash,
                feasible=h.best_feasible,
                composite=h.best_composite,
                violation=h.best_violation,
                first_feasible_iteration=first_feasible,
                iterations_done=h.iterations_done,
                accepted=accepted,
                counts=data.counts(view),
                wall_s=h.wall_s,
                tokens=h.total_tokens,
                llm_calls=h.llm_calls,
            )
        )
    rows.sort(key=_sort_key)
    return [RankRow(**{**row.__dict__, "rank": i}) for i, row in enumerate(rows, start=1)]


def agent_colors(agents: Sequence[str]) -> dict[str, str] | None:
    """With several runs of one agent (a benchmark's seeds): one colour per agent, in the order
    they come, so its runs read as a group. None when every agent ran once: a colour per run."""
    if len(set(agents)) == len(agents):
        return None
    return {agent: f"C{i % 10}" for i, agent in enumerate(dict.fromkeys(agents))}


def _agent_legend(ax: Axes, colors: dict[str, str], agents: Sequence[str]) -> None:
    handles = [
        Line2D([], [], color=color, lw=2, label=f"{agent} ({agents.count(agent)} runs)")
        for agent, color in colors.items()
    ]
    ax.legend(handles=handles, fontsize=7, loc="best")


def draw_incumbents(views: Sequence[RunView]) -> Figure:
    """The incumbent after each decision, one line per campaign: composite while feasible
    (top), violation while infeasible (bottom), as in the report's score figure."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True)
    its: set[int] = set()
    agents = [data.header(view).agent for view in views]
    colors = agent_colors(agents)
    for view in views:
        h = data.header(view)
        steps = data.incumbent_steps(view)
        xs = [s.iteration for s in steps]
        its.update(xs)
        label = f"{h.run} ({h.agent})"
        (line,) = top.step(
            xs,
            [figures.nan_if_none(s.composite) if s.feasible else math.nan for s in steps],
            where="post",
            lw=1.5,
            label=label,
            color=campaign_color(h.run) if colors is None else colors[h.agent],
            alpha=1.0 if colors is None else 0.7,
        )
        bottom.step(
            xs,
            [figures.nan_if_none(s.violation) if s.feasible is False else math.nan for s in steps],
            where="post",
            lw=1.5,
            color=line.get_color(),
            alpha=line.get_alpha(),
            label=label,
        )
    if not any(s.feasible for view in views for s in data.incumbent_steps(view)):
        top.text(0.5, 0.5, "no feasible incumbent yet", ha="center", transform=top.transAxes)
    bottom.axhline(0.0, color="0.5", ls="--", lw=1, label="feasible (violation 0)")
    bottom.set_yscale("symlog", linthresh=0.1)
    top.set_ylabel("incumbent composite\n(feasible, lower is better)")
    bottom.set_ylabel("incumbent total violation\n(infeasible)")
    bottom.set_xlabel("iteration")
    for ax in (top, bottom):
        figures.iteration_axis(ax, sorted(its))
        if colors is None:
            ax.legend(fontsize=7)
        else:
            _agent_legend(ax, colors, agents)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class CampaignTokens:
    """One campaign's point on the tokens-vs-score figure, and the path that led there."""

    campaign: str
    agent: str
    tokens: int  # total, 0 for an agent without a model
    llm_calls: int
    feasible: bool | None  # of the final incumbent
    composite: float | None
    violation: float | None
    path: list[data.TokenScorePoint]  # the incumbent against cumulative tokens, per decision

    @property
    def label(self) -> str:
        spent = f"{self.tokens:,} tokens" if self.llm_calls else "no LLM, 0 tokens"
        return f"{self.campaign} ({self.agent}; {spent})"


def tokens_vs_score(views: Sequence[RunView]) -> list[CampaignTokens]:
    """Per campaign, in the ranking's order: the LLM tokens it spent and the score it ended
    with (feasible: composite; infeasible: total violation)."""
    by_name = {row.campaign: row.rank for row in ranking(views)}
    points = []
    for view in views:
        h = data.header(view)
        tokens = data.token_figure(view)
        points.append(
            CampaignTokens(
                campaign=h.run,
                agent=h.agent,
                tokens=h.total_tokens,
                llm_calls=h.llm_calls,
                feasible=h.best_feasible,
                composite=h.best_composite,
                violation=h.best_violation,
                path=tokens.incumbent,
            )
        )
    return sorted(points, key=lambda p: by_name[p.campaign])


def draw_tokens_vs_score(points: Sequence[CampaignTokens]) -> Figure:
    """One point per campaign at (tokens spent, final incumbent score); an LLM campaign's
    incumbent along the way is a thin line of the same colour."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True)
    most = max((p.tokens for p in points), default=0)
    agents = [p.agent for p in points]
    colors = agent_colors(agents)
    for i, p in enumerate(points):
        color = campaign_color(p.campaign) if colors is None else colors[p.agent]
        if p.llm_calls:
            xs = [float(s.tokens) for s in p.path] + [float(p.tokens)]
            steps = [*p.path, p.path[-1]] if p.path else []
            figures.incumbent_panels(
                top, bottom, xs[: len(steps)], steps, "_nolegend_", color=color, lw=1, alpha=0.5
            )
        if p.feasible is None:
            continue
        ax, y = (top, p.composite) if p.feasible else (bottom, p.violation)
        marker = "o" if p.llm_calls else "s"
        ax.scatter(p.tokens, figures.nan_if_none(y), color=color, marker=marker, s=60, zorder=3)
        if colors is not None:
            continue  # by agent: the legend names them, the ranking table names each run
        # Labels right of the point, left of it for the big spenders (else they run off the
        # axes); staggered, since agents without tokens all sit at x = 0.
        right = p.tokens <= most / 2
        ax.annotate(
            p.label,
            (p.tokens, figures.nan_if_none(y)),
            textcoords="offset points",
            xytext=(6 if right else -6, 6 + 11 * (i % 3)),
            ha="left" if right else "right",
            fontsize=8,
            color=color,
        )
    if not any(p.feasible for p in points):
        top.text(0.5, 0.5, "no feasible incumbent", ha="center", transform=top.transAxes)
    bottom.axhline(0.0, color="0.5", ls="--", lw=1)
    bottom.set_yscale("symlog", linthresh=0.1)
    bottom.set_ylim(*figures.violation_limits([p.violation for p in points if not p.feasible]))
    top.set_ylabel("incumbent composite\n(feasible, lower is better)")
    bottom.set_ylabel("incumbent total violation\n(infeasible)")
    bottom.set_xlabel("LLM tokens spent (prompt + completion)")
    top.set_xlim(-0.06 * max(1, most), max(1, most) * 1.12)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))  # tokens come whole
    figures.thousands(bottom.xaxis)
    handles = [
        Line2D([], [], marker="o", ls="", color="0.3", label="LLM agent: final incumbent"),
        Line2D([], [], color="0.3", lw=1, alpha=0.5, label="LLM agent: incumbent so far"),
        Line2D([], [], marker="s", ls="", color="0.3", label="agent without LLM (0 tokens)"),
    ]
    top.legend(handles=handles, fontsize=8, loc="best")
    if colors is not None:
        _agent_legend(bottom, colors, agents)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def draw_ranking_by_agent(rows: Sequence[RankRow], colors: dict[str, str]) -> Figure:
    """Each agent's runs (seeds) at their final score, agents in the order of their best run's
    rank: composite of feasible runs on top, total violation of infeasible ones below."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 5.0), sharex=True)
    order = list(dict.fromkeys(r.agent for r in rows))  # rows come best first
    for x, agent in enumerate(order):
        runs = [r for r in rows if r.agent == agent]
        for j, r in enumerate(runs):
            if r.feasible is None or r.score is None:
                continue
            ax = top if r.feasible else bottom
            dx = (j - (len(runs) - 1) / 2) * 0.08  # seeds side by side, not on top of each other
            ax.scatter(x + dx, r.score, color=colors[agent], s=50, zorder=3)
        feasible = sum(1 for r in runs if r.feasible)
        top.annotate(
            f"{feasible}/{len(runs)} feasible",
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            textcoords="offset points",
            xytext=(0, -12),
            ha="center",
            fontsize=8,
        )
    if not any(r.feasible for r in rows):
        top.text(0.5, 0.5, "no feasible run", ha="center", transform=top.transAxes)
    bottom.axhline(0.0, color="0.5", ls="--", lw=1)
    bottom.set_yscale("symlog", linthresh=0.1)
    top.set_ylabel("final composite\n(feasible, lower is better)")
    bottom.set_ylabel("final total violation\n(infeasible)")
    bottom.set_xticks(range(len(order)), order, rotation=15, fontsize=8)
    bottom.set_xlim(-0.5, len(order) - 0.5)
    for ax in (top, bottom):
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _rank_table(rows: Sequence[RankRow]) -> str:
    head = [
        "rank",
        "campaign",
        "agent",
        "scorecard",
        "feasible",
        "composite / violation",
        "first feasible at",
        "proposals",
        "decided candidates",
        "agent failures",
        "accepted",
        "LLM tokens",
        "wall time",
    ]
    lines = ["<table class='ranking'>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in rows:
        if r.feasible is None:
            score = "nothing scored"
        else:
            kind = "composite" if r.feasible else "violation"
            score = f"{kind} {fmt(r.score)}"
        first = "—" if r.first_feasible_iteration is None else str(r.first_feasible_iteration)
        wall = "—" if r.wall_s is None else f"{r.wall_s:.0f} s"
        cells = [
            f"<td class='num'>{r.rank}</td>",
            f"<td><span class='swatch' style='background:{campaign_color(r.campaign)}'></span>"
            f"{escape(r.campaign)}</td>",
            f"<td>{escape(r.agent)}</td>",
            f"<td>{escape(r.spec_name)} <span class='hash'>{escape(r.spec_hash[:12])}</span></td>",
            f"<td>{fmt(r.feasible)}</td>",
            f"<td class='num'>{escape(score)}</td>",
            f"<td class='num'>{first}</td>",
            f"<td class='num'>{r.counts.proposals}</td>",
            f"<td class='num'>{r.counts.decided}</td>",
            f"<td class='num'>{r.counts.agent_failures}</td>",
            f"<td class='num'>{r.accepted}</td>",
            f"<td class='num'>{f'{r.tokens:,}' if r.llm_calls else '0 (no LLM)'}</td>",
            f"<td class='num'>{wall}</td>",
        ]
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def render_comparison(rows: Sequence[RankRow], refs: Sequence[FigureRef], test_hash: str) -> str:
    title = f"mlipilot comparison of {len(rows)} campaign(s)"
    spec = f"{rows[0].spec_name} (sha256 {rows[0].spec_hash})" if rows else "–"
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p>Scorecard {escape(spec)}; test split <span class='hash'>{escape(test_hash)}"
        "</span>. Ranked by the decision rule: feasible before infeasible, then the lower "
        "composite (feasible) or total violation (infeasible) of the final incumbent; ties "
        "by fewer LLM tokens, then campaign name.</p>",
        _rank_table(rows),
        *(figure_html(f) for f in refs),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def build_comparison(run_dirs: Sequence[Path], out: Path) -> Path:
    """Write the comparison page ``out`` (figure in ``<out stem>_files/``); return its path.

    Raises ``MlipilotError`` for no run folder, an unreadable one, or campaigns scored against
    different scorecards or test splits.
    """
    if not run_dirs:
        raise MlipilotError("nothing to compare: give at least one run folder")
    views = [load_run(Path(d)) for d in run_dirs]
    rows = ranking(views)
    out = Path(out)
    files = f"{out.stem}_files"
    figures.save(draw_incumbents(views), out.parent / files / FIGURE)
    refs = [
        FigureRef(
            f"{files}/{FIGURE}",
            "Incumbent per iteration",
            "One line per campaign: the incumbent after each decision. Top: its composite score "
            "while feasible (lower is better); bottom: its total normalized violation while "
            "infeasible (symlog axis; 0 = feasible, dashed).",
        ),
    ]
    colors = agent_colors([data.header(v).agent for v in views])
    if colors is not None:  # several runs of an agent: how its seeds ended, agent by agent
        figures.save(draw_ranking_by_agent(rows, colors), out.parent / files / RANKING_FIGURE)
        refs.append(
            FigureRef(
                f"{files}/{RANKING_FIGURE}",
                "Final score by agent",
                "One point per run (seed) at its final incumbent: composite while feasible "
                "(top, lower is better), total violation while infeasible (bottom, symlog). "
                "Agents left to right by their best run's rank; above each, how many of its "
                "runs ended feasible.",
            )
        )
    points = tokens_vs_score(views)
    # When every agent spent 0 tokens the table's column says so; a plot would not add to it.
    if any(p.llm_calls for p in points):
        figures.save(draw_tokens_vs_score(points), out.parent / files / TOKENS_FIGURE)
        refs.append(
            FigureRef(
                f"{files}/{TOKENS_FIGURE}",
                "Final score against LLM tokens spent",
                "One point per campaign: the LLM tokens its agent spent (prompt + completion, "
                "failed conversations included) and its final incumbent's composite (top, "
                "feasible) or total violation (bottom, infeasible, symlog). Squares at 0: agents "
                "without an LLM. Thin lines: an LLM campaign's incumbent against the tokens "
                "spent so far.",
            )
        )
    out.write_text(render_comparison(rows, refs, data.header(views[0]).test_hash), encoding="utf-8")
    return out
