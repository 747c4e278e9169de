"""LLM tokens and noise checks in the report and the comparison, on hand-written ledgers.

The LLM run: the baseline, an iteration whose conversation failed (tokens spent, no decision),
two accepted candidates (the second with a noise check, as noise-aware acceptance records it in
``detail.noise``) and a reverted one whose noise detail is malformed. The rule-based run spends
no tokens and ends with the same composite, so the comparison's token tie-break shows.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from mlipilot.ledger import Ledger, LedgerEvent
from mlipilot.recipe import Recipe
from mlipilot.report import build_report
from mlipilot.report import data as report_data
from mlipilot.report.compare import agent_colors, build_comparison, ranking, tokens_vs_score
from mlipilot.report.ledger_view import load_run

SCORECARD = Path(__file__).resolve().parents[2] / "scorecard" / "cu-emt.yaml"
BASE = Recipe()
AGENT = "llm:test-model"

# (iteration, candidate, status, prompt tokens, completion tokens)
CALLS = [
    (1, "it001", "failed", 1000, 100),
    (2, "it002", "proposed", 1500, 200),
    (3, "it003", "proposed", 2000, 300),
    (4, "it004", "proposed", 400, 50),
]
NOISE = {
    "seeds": [1, 2, 3],
    "k": 1.0,
    "metric": "composite",
    # Each side as campaign.decision writes it: the first run is the original training.
    "incumbent": {
        "candidate": "it002",
        "runs": ["it002", "it002-s2", "it002-s3"],
        "seeds": [1, 2, 3],
        "values": [1.2, 1.25, 1.15],
        "feasible": [True] * 3,
    },
    "candidate": {
        "candidate": "it003",
        "runs": ["it003", "it003-s2", "it003-s3"],
        "seeds": [1, 2, 3],
        "values": [1.0, 1.05, 0.95],
        "feasible": [True] * 3,
    },
    "gain": 0.2,
    "spread": 0.07,
}
METRICS = {
    "energy_mae_meV_per_atom": 20.0,
    "force_mae_meV_per_A": 40.0,
    "md_survival_fraction": 1.0,
    "relative_throughput": 1.0,
}


def _run(root: Path, *, llm: bool) -> Path:
    root.mkdir()
    shutil.copyfile(SCORECARD, root / "scorecard.yaml")
    agent = AGENT if llm else "rule-based"
    with Ledger(root / "ledger.sqlite") as ledger:

        def add(**kw: Any) -> None:
            ledger.append(LedgerEvent(campaign=root.name, agent=agent, **kw))

        def call(iteration: int) -> None:
            for it, name, status, prompt, completion in CALLS:
                if llm and it == iteration:
                    detail = {"model": "test-model", "prompt_tokens": prompt}
                    detail |= {"completion_tokens": completion, "requests": 1}
                    detail["total_tokens"] = prompt + completion
                    add(
                        event="agent_call",
                        iteration=it,
                        candidate=name,
                        status=status,
                        detail=detail,
                    )

        def decide(it: int, verdict: str, feasible: bool, composite: float, **kw: Any) -> None:
            name = f"it{it:03d}"
            recipe = BASE.patched({"lr": 0.001 * (it + 1)})
            add(event="proposal", iteration=it, candidate=name, recipe=recipe.model_dump())
            add(
                event="decision",
                iteration=it,
                candidate=name,
                decision=verdict,
                metrics=METRICS,
                feasible=feasible,
                composite=composite,
                violation=0.0 if feasible else 0.8,
                reason=f"{verdict.lower()} {name}",
                hypothesis=f"h{it}",
                **kw,
            )

        add(event="campaign_started", recipe=BASE.model_dump(), train_hash="tr", test_hash="te")
        decide(0, "BASELINE", False, 2.0)
        call(1)
        add(event="agent_failure", iteration=1, status="failed", reason="bad answers")
        call(2)
        decide(2, "ACCEPT", True, 1.2)
        call(3)
        decide(3, "ACCEPT", True, 1.0, detail={"noise": NOISE})
        call(4)
        decide(4, "REVERT", True, 1.1, detail={"noise": {"seeds": [1], "gain": "x"}})
        add(event="campaign_finished", status="finished", duration_s=10.0)
    return root


@pytest.fixture
def llm_root(tmp_path: Path) -> Path:
    return _run(tmp_path / "llm-run", llm=True)


@pytest.fixture
def rule_root(tmp_path: Path) -> Path:
    return _run(tmp_path / "rule-run", llm=False)


PROMPT = sum(c[3] for c in CALLS)
COMPLETION = sum(c[4] for c in CALLS)


def test_token_totals_and_per_iteration(llm_root: Path) -> None:
    view = load_run(llm_root)
    h = report_data.header(view)
    assert (h.llm_calls, h.prompt_tokens, h.completion_tokens) == (4, PROMPT, COMPLETION)
    assert h.total_tokens == PROMPT + COMPLETION == 5550
    fig = report_data.token_figure(view)
    assert fig.spent and fig.agent == AGENT and fig.total_tokens == 5550
    # Iteration 1 has no decision but cost tokens; the baseline cost none.
    assert [(t.iteration, t.total_tokens, t.cumulative_tokens) for t in fig.iterations] == [
        (0, 0, 0),
        (1, 1100, 1100),
        (2, 1700, 2800),
        (3, 2300, 5100),
        (4, 450, 5550),
    ]
    assert [t.calls for t in fig.iterations] == [0, 1, 1, 1, 1]
    # The incumbent against the tokens spent before each decision.
    assert [(p.candidate, p.tokens, p.incumbent_candidate) for p in fig.incumbent] == [
        ("it000", 0, "it000"),
        ("it002", 2800, "it002"),
        ("it003", 5100, "it003"),
        ("it004", 5550, "it003"),
    ]
    assert [p.composite for p in fig.incumbent] == [2.0, 1.2, 1.0, 1.0]
    assert [p.feasible for p in fig.incumbent] == [False, True, True, True]
    rows = {r.candidate: r.tokens for r in report_data.iteration_table(view)}
    assert rows == {"it000": None, "it002": 1700, "it003": 2300, "it004": 450}


def test_noise_check_is_read_where_present_and_absent_safe(llm_root: Path) -> None:
    view = load_run(llm_root)
    points = {p.candidate: p for p in report_data.score_figure(view).points}
    assert [points[c].noise for c in ("it000", "it002", "it004")] == [None, None, None]
    noise = points["it003"].noise
    assert noise is not None
    assert (noise.seeds, noise.k, noise.metric) == ([1, 2, 3], 1.0, "composite")
    assert (noise.gain, noise.spread, noise.bar, noise.beats_noise) == (0.2, 0.07, 0.07, True)
    # The loop's rule is gain > k * spread: with k = 3 the same numbers are within noise.
    strict = report_data.NoiseCheck(**{**noise.__dict__, "k": 3.0})
    assert strict.bar == pytest.approx(0.21) and strict.beats_noise is False
    assert noise.candidate.candidate == "it003" and noise.incumbent.candidate == "it002"
    assert noise.candidate.mean == pytest.approx(1.0)
    assert noise.candidate.sd == pytest.approx(0.05)
    assert noise.incumbent.mean == pytest.approx(1.2)
    assert noise.incumbent.sd == pytest.approx(0.05)
    table = {r.candidate: r.noise for r in report_data.iteration_table(view)}
    assert table["it003"] == noise and table["it004"] is None


def test_noise_values_that_are_not_numbers_are_left_out() -> None:
    row = LedgerEvent(
        campaign="c",
        event="decision",
        iteration=1,
        detail={
            "noise": {
                "incumbent": {
                    "candidate": "it000",
                    "values": [1.0, None, "x", 3.0],
                    "feasible": [True, None, None, False],
                },
                "candidate": {"candidate": "it001", "values": [2.0]},
            }
        },
    )
    noise = report_data.noise_check(row)
    assert noise is not None
    assert noise.incumbent.finite == [1.0, 3.0] and noise.incumbent.mean == 2.0
    assert noise.candidate.sd == 0.0  # one seed: no spread to show
    assert noise.gain is None and noise.beats_noise is None and noise.seeds == []
    assert math.isnan(noise.incumbent.values[1])
    assert noise.incumbent.feasible == [True, None, None, False]
    for detail in (None, {}, {"noise": None}, {"noise": [1, 2]}, {"noise": {"candidate": {}}}):
        assert report_data.noise_check(row.model_copy(update={"detail": detail})) is None


def test_report_page_shows_tokens_and_noise(llm_root: Path) -> None:
    text = build_report(llm_root).read_text()
    images = re.findall(r"<img src='([^']+)'", text)
    assert images == [
        "report/score.png",
        "report/tokens.png",
        "report/decisions.png",
        "report/constraints.png",
        "report/md.png",
    ]
    for src in images:
        assert (llm_root / src).stat().st_size > 1000
    assert "5,550 (4,900 prompt + 650 completion) in 4 conversation(s)" in text
    assert "<th>reason</th><th>LLM tokens</th>" in text and "<td class='num'>2,300</td>" in text
    assert "composite gain 0.200 vs 1 × spread 0.070 (beats noise, 3 seeds)" in text
    assert "it003 1.000 ± 0.050<br>it002 1.200 ± 0.050" in text
    assert "re-scored over 3 seeds" in text


def test_report_without_llm_calls_has_no_token_figure(rule_root: Path) -> None:
    view = load_run(rule_root)
    fig = report_data.token_figure(view)
    assert not fig.spent and fig.total_tokens == 0
    assert [t.cumulative_tokens for t in fig.iterations] == [0] * 5
    text = build_report(rule_root).read_text()
    assert "none (the agent made no LLM calls)" in text
    assert "tokens.png" not in text and not (rule_root / "report" / "tokens.png").exists()
    # it003's noise detail is recorded in both runs; the columns follow the rows.
    assert "<th>reason</th><th>LLM tokens</th>" not in text and "noise check" in text


def test_comparison_has_tokens_column_and_figure(
    llm_root: Path, rule_root: Path, tmp_path: Path
) -> None:
    views = [load_run(llm_root), load_run(rule_root)]
    rows = ranking(views)
    # Both end at composite 1.0: the one that spent no tokens ranks first (not by name).
    assert [(r.campaign, r.tokens, r.llm_calls) for r in rows] == [
        ("rule-run", 0, 0),
        ("llm-run", 5550, 4),
    ]
    points = tokens_vs_score(views)
    assert [(p.campaign, p.tokens, p.feasible, p.composite) for p in points] == [
        ("rule-run", 0, True, 1.0),
        ("llm-run", 5550, True, 1.0),
    ]
    assert points[0].label == "rule-run (rule-based; no LLM, 0 tokens)"
    assert points[1].label == f"llm-run ({AGENT}; 5,550 tokens)"
    assert [s.tokens for s in points[1].path] == [0, 2800, 5100, 5550]
    out = tmp_path / "site" / "cmp.html"
    text = build_comparison([llm_root, rule_root], out).read_text()
    assert "<th>LLM tokens</th>" in text
    assert "<td class='num'>5,550</td>" in text and "<td class='num'>0 (no LLM)</td>" in text
    assert text.index("rule-run") < text.index("llm-run")
    images = re.findall(r"<img src='([^']+)'", text)
    assert images == ["cmp_files/incumbents.png", "cmp_files/tokens.png"]
    assert all((out.parent / src).stat().st_size > 1000 for src in images)
    # Campaigns that spent no tokens at all: the column says so, no figure of zeros.
    alone = build_comparison([rule_root], tmp_path / "alone" / "cmp.html").read_text()
    assert re.findall(r"<img src='([^']+)'", alone) == ["cmp_files/incumbents.png"]
    assert not (tmp_path / "alone" / "cmp_files" / "tokens.png").exists()


def test_several_runs_of_an_agent_are_drawn_by_agent_with_a_ranking_figure(
    llm_root: Path, rule_root: Path, tmp_path: Path
) -> None:
    second_rule = _run(tmp_path / "rule-run-2", llm=False)  # a benchmark's second seed
    assert agent_colors(["rule-based", AGENT]) is None  # one run each: a colour per run
    colors = agent_colors(["rule-based", AGENT, "rule-based"])
    assert colors == {"rule-based": "C0", AGENT: "C1"}
    out = tmp_path / "bench" / "cmp.html"
    text = build_comparison([rule_root, llm_root, second_rule], out).read_text()
    images = re.findall(r"<img src='([^']+)'", text)
    assert images == ["cmp_files/incumbents.png", "cmp_files/ranking.png", "cmp_files/tokens.png"]
    assert all((out.parent / src).stat().st_size > 1000 for src in images)
    assert "Final score by agent" in text


def test_counts_say_what_they_count(llm_root: Path) -> None:
    """An agent that failed at one of four iterations: 3 proposals, 3 decided, 1 failure (not
    'iterations 3', which read as if a fourth had never been asked for)."""
    counts = report_data.counts(load_run(llm_root))
    assert (counts.proposals, counts.decided, counts.agent_failures) == (3, 3, 1)
    rows = ranking([load_run(llm_root)])
    assert rows[0].counts == counts


def test_a_campaign_has_one_colour_in_every_comparison_figure(
    llm_root: Path, rule_root: Path, tmp_path: Path
) -> None:
    from matplotlib.colors import to_hex

    from mlipilot.report.colors import campaign_color
    from mlipilot.report.compare import draw_incumbents, draw_tokens_vs_score

    views = [load_run(llm_root), load_run(rule_root)]
    incumbents = draw_incumbents(views)
    line_colors = {
        line.get_label().split(" ")[0]: to_hex(line.get_color())
        for line in incumbents.axes[0].get_lines()
        if not line.get_label().startswith("_")
    }
    tokens = draw_tokens_vs_score(tokens_vs_score(views))
    point_colors = {
        text.get_text().split(" ")[0]: to_hex(text.get_color())
        for ax in tokens.axes
        for text in ax.texts
        if text.get_text().split(" ")[0] in line_colors
    }
    for view in views:
        name = view.run_dir.name
        assert line_colors[name] == campaign_color(name)
        assert point_colors[name] == campaign_color(name)
