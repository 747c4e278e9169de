"""The report and the comparison of real tiny campaigns: one driven by the LLM agent (against
the scripted OpenAI-compatible server of ``test_llm_campaign``), one by the rule-based agent.

The token figures' numbers are checked against the ``agent_call`` rows of the real ledger,
and the comparison's tokens column and tokens-vs-score points against both ledgers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from factories import write_tiny_campaign
from llm_server import serve
from test_llm_campaign import MODEL, SCRIPT, USAGE
from typer.testing import CliRunner

from mlipilot.campaign.loop import run_campaign
from mlipilot.cli import app
from mlipilot.config import load_campaign
from mlipilot.ledger import LedgerEvent, read_events
from mlipilot.report import build_report
from mlipilot.report import data as report_data
from mlipilot.report.compare import build_comparison, ranking, tokens_vs_score
from mlipilot.report.ledger_view import load_run

pytestmark = pytest.mark.slow

# Two conversations (iterations 1 and 2) of two calls each; iteration 3 is refused by the
# token budget and asks nothing.
SPENT = 2 * 2 * sum(USAGE)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(LLM run folder, rule-based run folder): same data, scorecard and test split."""
    tmp = tmp_path_factory.mktemp("report_llm")
    path = write_tiny_campaign(tmp, name="llm", data_path=tmp / "data", iterations=3)
    campaign = yaml.safe_load(path.read_text())
    campaign["agent"] = {"kind": "rule-based", "max_tool_errors": 1}
    campaign["budget"]["agent_tokens"] = 3000  # as in test_llm_campaign: spent after 4 calls
    path.write_text(yaml.safe_dump(campaign))
    with serve([MODEL], SCRIPT) as server:
        args = ["run", str(path), "--out", str(tmp / "llm-runs"), "--agent", "llm"]
        result = CliRunner().invoke(app, [*args, "--base-url", server.url, "--model", MODEL])
    assert result.exit_code == 0, result.output
    [llm_dir] = (tmp / "llm-runs").iterdir()
    rule_path = write_tiny_campaign(tmp, name="rule", data_path=tmp / "data", iterations=1)
    rule, _ = load_campaign(rule_path)
    rule_dir = run_campaign(rule, rule_path, tmp / "rule-runs").layout.root
    return llm_dir, rule_dir


def ledger_calls(run_dir: Path) -> list[LedgerEvent]:
    return [e for e in read_events(run_dir / "ledger.sqlite") if e.event == "agent_call"]


def test_report_tokens_are_the_ledgers_agent_calls(runs: tuple[Path, Path]) -> None:
    llm_dir, _ = runs
    page = build_report(llm_dir)
    events = read_events(llm_dir / "ledger.sqlite")
    calls = [e for e in events if e.event == "agent_call"]
    total = sum(c.detail["total_tokens"] for c in calls)
    assert total == SPENT
    view = load_run(llm_dir)
    fig = report_data.token_figure(view)
    assert fig.total_tokens == total and fig.calls == len(calls) == 2
    assert fig.prompt_tokens == sum(c.detail["prompt_tokens"] for c in calls)
    assert fig.completion_tokens == sum(c.detail["completion_tokens"] for c in calls)
    per_call = {c.iteration: c.detail["total_tokens"] for c in calls}
    assert [(t.iteration, t.total_tokens) for t in fig.iterations] == [
        (it, per_call.get(it, 0)) for it in range(len(fig.iterations))
    ]
    assert fig.iterations[-1].cumulative_tokens == total
    # One point per decision (the baseline and iteration 2; iteration 1's conversation
    # failed), at the tokens recorded before it; the incumbent is the decisions' running best.
    decisions = [e for e in events if e.event == "decision"]
    assert [(p.iteration, p.tokens) for p in fig.incumbent] == [(0, 0), (2, total)]
    steps = report_data.incumbent_steps(view)
    assert [(p.incumbent_candidate, p.composite, p.violation) for p in fig.incumbent] == [
        (s.incumbent_candidate, s.composite, s.violation) for s in steps
    ]
    assert [b.decision for b in report_data.decision_figure(view).bars] == [
        d.decision for d in decisions
    ]
    h = report_data.header(view)
    assert (h.total_tokens, h.llm_calls) == (total, 2)
    text = page.read_text()
    prompt, completion = fig.prompt_tokens, fig.completion_tokens
    assert f"{total:,} ({prompt:,} prompt + {completion:,} completion) in 2 conversation(s)" in text
    assert "report/tokens.png" in text and (llm_dir / "report" / "tokens.png").stat().st_size > 1000
    rows = {r.candidate: r.tokens for r in report_data.iteration_table(view)}
    assert rows == {"it000": None, "it002": per_call[2]}


def test_comparison_ranks_and_labels_the_tokens(runs: tuple[Path, Path], tmp_path: Path) -> None:
    llm_dir, rule_dir = runs
    views = [load_run(llm_dir), load_run(rule_dir)]
    rows = ranking(views)

    def final(run_dir: Path) -> LedgerEvent:
        [row] = [
            e for e in read_events(run_dir / "ledger.sqlite") if e.event == "campaign_finished"
        ]
        return row

    spent = {d.name: sum(c.detail["total_tokens"] for c in ledger_calls(d)) for d in runs}
    assert spent == {llm_dir.name: SPENT, rule_dir.name: 0}

    def rule(run_dir: Path) -> tuple[int, float, int, str]:
        row = final(run_dir)
        score = row.composite if row.feasible else row.violation
        assert score is not None
        return (0 if row.feasible else 1, score, spent[run_dir.name], run_dir.name)

    assert [r.campaign for r in rows] == [d.name for d in sorted(runs, key=rule)]
    assert {r.campaign: (r.tokens, r.llm_calls) for r in rows} == {
        llm_dir.name: (SPENT, 2),
        rule_dir.name: (0, 0),
    }
    points = {p.campaign: p for p in tokens_vs_score(views)}
    assert [p.campaign for p in tokens_vs_score(views)] == [r.campaign for r in rows]
    for run_dir in runs:
        point, row = points[run_dir.name], final(run_dir)
        assert point.tokens == spent[run_dir.name]
        assert point.feasible == row.feasible
        assert point.composite == pytest.approx(row.composite)
        assert point.violation == pytest.approx(row.violation)
    assert points[rule_dir.name].label == f"{rule_dir.name} (rule-based; no LLM, 0 tokens)"
    assert points[llm_dir.name].label == f"{llm_dir.name} (llm:{MODEL}; {SPENT:,} tokens)"
    out = tmp_path / "compare.html"
    text = build_comparison([llm_dir, rule_dir], out).read_text()
    assert f"<td class='num'>{SPENT:,}</td>" in text and "<td class='num'>0 (no LLM)</td>" in text
    assert re.findall(r"<img src='([^']+)'", text) == [
        "compare_files/incumbents.png",
        "compare_files/tokens.png",
    ]
    assert (tmp_path / "compare_files" / "tokens.png").stat().st_size > 1000
