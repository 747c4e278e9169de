"""The report page: static HTML, no JavaScript, nothing fetched; every text escaped."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from mlipilot.ledger.events import ValidationDetail
from mlipilot.report.data import (
    Header,
    NoiseCheck,
    RecipeDiff,
    TableRow,
    ValidationSection,
    iteration_label,
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.noise { font-size: 0.9em; min-width: 12em; }
/* Metric names in reasons are long unbroken words: let them wrap, so the table fits the page;
   a table still too wide (token and noise columns) scrolls in its box, not the page. */
td.text, td.reason { overflow-wrap: anywhere; min-width: 10em; }
div.wide { overflow-x: auto; }
code, .hash { font-family: ui-monospace, monospace; font-size: 0.9em; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em; }
tr.ACCEPT td.decision { background: #d8f0d8; }
tr.REVERT td.decision { background: #f6d6d6; }
tr.BASELINE td.decision { background: #e6e6e6; }
tr.FAILED td.decision { background: #333; color: #fff; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
p.bad { color: #a00; font-weight: 600; }
"""


@dataclass(frozen=True)
class FigureRef:
    src: str  # relative to the report page
    title: str
    caption: str


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.3f}"
    return str(value)


def _value(value: Any) -> str:
    return escape(json.dumps(value) if not isinstance(value, str) else value)


def tokens_text(h: Header) -> str:
    """The LLM tokens line of the summary: failed conversations count, they were paid for."""
    if h.llm_calls == 0:
        return "none (the agent made no LLM calls)"
    return (
        f"{h.total_tokens:,} ({h.prompt_tokens:,} prompt + {h.completion_tokens:,} completion) "
        f"in {h.llm_calls} conversation(s)"
    )


def _header(h: Header) -> str:
    where = iteration_label(h.best_iteration, h.best_candidate)
    if h.best_iteration is None:
        best = "none (no candidate was scored)"
    elif h.best_feasible:
        best = f"{where}, feasible, composite {fmt(h.best_composite)}"
    else:
        best = f"{where}, infeasible, violation {fmt(h.best_violation)}"
    planned = f" of {h.iterations_planned}" if h.iterations_planned is not None else ""
    wall = f"{h.wall_s:.0f} s" if h.wall_s is not None else "–"
    rows = [
        ("campaign", f"{escape(h.campaign)} <span class='hash'>({escape(h.run)})</span>"),
        ("agent", escape(h.agent)),
        (
            "scorecard",
            f"{escape(h.spec_name)} v{h.spec_version} "
            f"<span class='hash'>sha256 {escape(h.spec_hash)}</span>",
        ),
        ("train split", f"<span class='hash'>{escape(h.train_hash)}</span>"),
        ("test split", f"<span class='hash'>{escape(h.test_hash)}</span>"),
        (
            "iterations",
            f"{h.iterations_done}{planned} after the baseline"
            + (
                f" ({h.candidates_done} candidates)"
                if h.candidates_done != h.iterations_done
                else ""
            )
            + (f", {h.epochs} epochs each" if h.epochs is not None else ""),
        ),
        ("status", escape(h.status)),
        ("wall time", wall),
        ("LLM tokens", escape(tokens_text(h))),
        ("best", escape(best)),
    ]
    body = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table class='header'>\n{body}\n</table>"


def _recipe(diff: RecipeDiff) -> str:
    if diff.incumbent_iteration is None:
        return "<p>No candidate was scored, so there is no incumbent recipe.</p>"
    where = iteration_label(diff.incumbent_iteration, diff.incumbent_candidate)
    parts = [f"<p>Incumbent: {escape(where)}.</p>"]
    if diff.entries:
        rows = "\n".join(
            f"<tr><td><code>{escape(e.key)}</code></td><td><code>{_value(e.baseline)}</code>"
            f"</td><td>→</td><td><code>{_value(e.incumbent)}</code></td></tr>"
            for e in diff.entries
        )
        parts.append(
            "<table class='diff'><tr><th>key</th><th>baseline</th><th></th><th>incumbent</th>"
            f"</tr>\n{rows}\n</table>"
        )
    else:
        parts.append("<p>The incumbent is the baseline recipe: no proposal was accepted.</p>")
    if diff.path:
        items = "\n".join(
            f"<li><b>{escape(iteration_label(s.iteration, s.candidate or None))}</b> "
            f"<code>{escape(json.dumps(s.patch, sort_keys=True))}</code>: "
            f"{escape(s.hypothesis)} <i>({escape(s.reason)})</i></li>"
            for s in diff.path
        )
        parts.append(f"<p>Accepted hypotheses, in order:</p>\n<ol class='path'>\n{items}\n</ol>")
    return "\n".join(parts)


def _mean_sd(mean: float | None, sd: float | None) -> str:
    return "–" if mean is None else f"{fmt(mean)} ± {fmt(sd)}"


def noise_text(n: NoiseCheck) -> str:
    """One table cell: gain against spread, and both sides' seed mean ± sd."""
    verdict = {True: "beats noise", False: "within noise", None: "a seed failed"}[n.beats_noise]
    k = "" if n.k is None else f"{n.k:g} × "
    return (
        f"{escape(n.metric)} gain {fmt(n.gain)} vs {k}spread {fmt(n.spread)} ({verdict}, "
        f"{len(n.seeds)} seeds)<br>{escape(n.candidate.candidate)} "
        f"{_mean_sd(n.candidate.mean, n.candidate.sd)}<br>"
        f"{escape(n.incumbent.candidate)} {_mean_sd(n.incumbent.mean, n.incumbent.sd)}"
    )


def _table(rows: Sequence[TableRow], columns: dict[str, str]) -> str:
    # Token and noise columns only where the campaign has them: most have neither.
    tokens = any(r.tokens is not None for r in rows)
    noise = any(r.noise is not None for r in rows)
    head = ["candidate", "hypothesis", "changed"]
    head += [escape(v) for v in columns.values()]
    head += ["feasible", "composite", "violation", "decision", "reason"]
    head += ["LLM tokens"] if tokens else []
    head += ["noise check (seed mean ± sd)"] if noise else []
    lines = [
        "<div class='wide'><table class='iterations'>",
        "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>",
    ]
    for r in rows:
        category = "FAILED" if r.failed else r.decision
        changed = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(r.changed.items()))
        cells = [
            f"<td>{escape(r.candidate)}</td>",
            f"<td class='text'>{escape(r.hypothesis)}</td>",
            f"<td class='text'><code>{escape(changed)}</code></td>",
        ]
        cells += [f"<td class='num'>{fmt(r.metrics.get(k))}</td>" for k in columns]
        cells += [
            f"<td>{fmt(r.feasible)}</td>",
            f"<td class='num'>{fmt(r.composite)}</td>",
            f"<td class='num'>{fmt(r.violation)}</td>",
            f"<td class='decision'>{escape(category)}</td>",
            f"<td class='reason'>{escape(r.reason)}</td>",
        ]
        if tokens:
            cells.append(f"<td class='num'>{'–' if r.tokens is None else f'{r.tokens:,}'}</td>")
        if noise:
            cells.append(f"<td class='noise'>{'' if r.noise is None else noise_text(r.noise)}</td>")
        lines.append(f"<tr class='{escape(category)}'>" + "".join(cells) + "</tr>")
    lines.append("</table></div>")
    return "\n".join(lines)


def figure_html(ref: FigureRef) -> str:
    return (
        f"<figure><img src='{escape(ref.src)}' alt='{escape(ref.title)}'>"
        f"<figcaption><b>{escape(ref.title)}.</b> {escape(ref.caption)}</figcaption></figure>"
    )


def _validation(section: ValidationSection) -> str:
    """Whether the accepted models hold up beyond the scorecard, and each validated one's
    checks, with a link to its own validation page."""
    done = {v.candidate for v in section.validated}
    parts = [
        f"<p>Scorecard accepts: {len(section.accepted)}; validated: "
        f"{sum(c in done for c in section.accepted)}; passing every check: "
        f"{len(section.confirmed)}.</p>"
    ]
    if section.best is not None and section.best not in done:
        parts.append(
            f"<p class='bad'>The best model ({escape(section.best)}) was accepted by the "
            "scorecard but not validated: the campaign named no validation suite "
            "(<code>validation.suite</code>).</p>"
        )
    for v in section.validated:
        link = f"candidates/{v.candidate}/validation.html"
        parts.append(
            f"<h3>{escape(v.candidate or '')}: {escape(v.status or '')}</h3>"
            f"<p>{escape(v.reason or '')} (<a href='{escape(link)}'>its validation page</a>)</p>"
        )
        checks = v.details(ValidationDetail).checks
        if checks:
            rows = "".join(
                f"<tr><td>{escape(str(c.get('metric')))}</td><td>{fmt(c.get('value'), 4)}</td>"
                f"<td>{fmt(c.get('reference'), 4)}</td><td>{escape(str(c.get('tolerance')))}</td>"
                f"<td>{'pass' if c.get('passed') else '<b>FAIL</b>'}</td></tr>"
                for c in checks
            )
            parts.append(
                "<table><tr><th>check</th><th>model</th><th>reference</th><th>tolerance</th>"
                f"<th>verdict</th></tr>{rows}</table>"
            )
    return "\n".join(parts)


def render_page(
    header: Header,
    figures: Sequence[FigureRef],
    diff: RecipeDiff,
    rows: Sequence[TableRow],
    columns: dict[str, str],
    validation: ValidationSection | None = None,
) -> str:
    title = f"mlipilot campaign report: {header.campaign}"
    body = [
        f"<h1>{escape(title)}</h1>",
        _header(header),
        "<h2>Results</h2>",
        *(figure_html(f) for f in figures),
        *(
            ["<h2>Validation (physics the scorecard never sees)</h2>", _validation(validation)]
            if validation is not None
            else []
        ),
        "<h2>Incumbent recipe (baseline → incumbent)</h2>",
        _recipe(diff),
        "<h2>Iterations</h2>",
        _table(rows, columns),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
