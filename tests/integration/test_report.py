"""The campaign report: its figures' data against the ledger, the spec and the recipes."""

from __future__ import annotations

import csv
import html
import re
from pathlib import Path

import pytest
import yaml
from factories import BAD_BASELINE, TINY_SPEC, write_tiny_campaign

from mlipilot.campaign.decision import decide
from mlipilot.campaign.loop import CampaignOutcome, run_campaign
from mlipilot.config import Campaign, load_campaign
from mlipilot.errors import MlipilotError
from mlipilot.ledger import Ledger, LedgerEvent
from mlipilot.recipe import Recipe
from mlipilot.report import build_report
from mlipilot.report import data as report_data
from mlipilot.report.ledger_view import RunView, load_run
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.spec import load_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Campaign, CampaignOutcome, Path]:
    tmp = tmp_path_factory.mktemp("report")
    path = write_tiny_campaign(tmp, name="tiny-report")
    campaign, _ = load_campaign(path)
    outcome = run_campaign(campaign, path, tmp / "runs")
    page = build_report(outcome.layout.root)
    return campaign, outcome, page


@pytest.fixture(scope="module")
def view(real_run) -> RunView:
    return load_run(real_run[1].layout.root)


def ledger_decisions(run_dir: Path) -> list[LedgerEvent]:
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        return ledger.events("decision")


def test_decisions_figure_equals_ledger_rows(real_run, view) -> None:
    _, outcome, _ = real_run
    rows = ledger_decisions(outcome.layout.root)
    bars = report_data.decision_figure(view).bars
    assert [(b.iteration, b.decision, b.reason) for b in bars] == [
        (r.iteration, r.decision, r.reason) for r in rows
    ]
    assert [b.failed for b in bars] == [r.metrics is None for r in rows]
    assert [b.iteration for b in bars] == list(range(len(rows)))
    assert (
        bars[0].decision == "BASELINE" and bars[0].color == report_data.DECISION_COLORS["BASELINE"]
    )
    for b in bars:
        assert b.color == report_data.DECISION_COLORS["FAILED" if b.failed else b.decision]


def test_incumbent_line_is_the_running_best_by_the_decision_rule(real_run, view) -> None:
    _, outcome, _ = real_run
    spec, spec_hash = load_spec(outcome.layout.root / "scorecard.yaml")
    rows = ledger_decisions(outcome.layout.root)
    steps = report_data.score_figure(view).incumbent
    assert [s.iteration for s in steps] == [r.iteration for r in rows]
    incumbent: ScoreResult | None = None
    previous = None
    for row, step in zip(rows, steps, strict=True):
        # Re-judge the recorded metrics and re-apply the rule: the ledger's verdict follows.
        result = None
        if row.metrics is not None:
            result = ScoreResult.judged(spec, row.metrics, spec_hash=spec_hash, test_hash="t")
            assert result.feasible == row.feasible
            assert result.composite == pytest.approx(row.composite)
        assert decide(result, incumbent, failure="x").verdict == row.decision
        if row.decision in ("BASELINE", "ACCEPT") and result is not None:
            incumbent = result
            assert step.incumbent_iteration == row.iteration
            assert step.composite == row.composite and step.violation == row.violation
            assert step.feasible == row.feasible
        else:  # the line changes exactly at ACCEPT (and BASELINE) rows
            assert previous is not None
            assert (step.incumbent_iteration, step.composite, step.violation) == (
                previous.incumbent_iteration,
                previous.composite,
                previous.violation,
            )
        previous = step
    assert steps[-1].incumbent_iteration == outcome.best_iteration
    assert steps[-1].composite == pytest.approx(outcome.best_result.composite)
    points = report_data.score_figure(view).points
    assert [(p.composite, p.violation, p.feasible) for p in points] == [
        (r.composite, r.violation, r.feasible) for r in rows
    ]
    assert report_data.score_figure(view).feasibility_threshold == 0.0


def test_thresholds_are_the_specs(view) -> None:
    panels = report_data.constraint_figure(view).panels
    expected = [(c["metric"], c.get("max", c.get("min"))) for c in TINY_SPEC["constraints"]]
    assert [(p.metric, p.threshold) for p in panels] == expected
    assert [p.op for p in panels] == ["<=", "<=", ">=", ">="]
    rows = view.decisions
    for panel in panels:
        scored = [r for r in rows if r.metrics]
        assert [p.iteration for p in panel.points] == [r.iteration for r in scored]
        assert [p.value for p in panel.points] == [r.metrics[panel.metric] for r in scored]
        assert [p.accepted for p in panel.points] == [
            r.decision in ("BASELINE", "ACCEPT") for r in scored
        ]
    md = report_data.md_figure(view)
    assert md.min_distance_threshold_A == TINY_SPEC["md"]["min_distance_A"]
    assert md.target_temperatures_K == TINY_SPEC["md"]["temperatures_K"]


def test_recipe_diff_is_baseline_to_incumbent(real_run, view) -> None:
    campaign, outcome, _ = real_run
    folder = outcome.layout.candidate(outcome.best_iteration)
    incumbent = Recipe.model_validate(yaml.safe_load((folder / "recipe.yaml").read_text()))
    diff = report_data.recipe_diff(view)
    assert diff.incumbent_iteration == outcome.best_iteration
    assert diff.as_patch() == campaign.baseline.diff(incumbent)
    base = campaign.baseline.model_dump()
    assert all(e.baseline == base[e.key] for e in diff.entries)
    accepted = [r for r in outcome.rows if r.verdict == "ACCEPT"]
    assert [(s.iteration, s.hypothesis) for s in diff.path] == [
        (r.iteration, r.hypothesis) for r in accepted
    ]


def test_md_traces_are_the_incumbents_and_the_failed_replicas(real_run, view) -> None:
    _, outcome, _ = real_run
    md = report_data.md_figure(view)
    assert md.incumbent_iteration == outcome.best_iteration
    best = ScoreResult.model_validate_json(
        (outcome.layout.candidate(outcome.best_iteration) / "result.json").read_text()
    )
    replicas = best.details["md_replicas"]
    mine = [t for t in md.traces if t.role == "incumbent"]
    assert [t.replica for t in mine] == [r["trace_file"] for r in replicas]
    assert not md.missing
    for trace in md.traces:
        path = outcome.layout.root / "candidates" / trace.candidate / "md" / trace.replica
        with path.open() as fh:
            rows = list(csv.DictReader(fh))
        assert trace.time_ps == [float(r["time_ps"]) for r in rows]
        assert trace.min_distance_A == [float(r["min_distance_A"]) for r in rows]
        assert trace.role == "incumbent" or trace.status != "stable"
    failed = [t for t in md.traces if t.role == "failed"]
    expected = 0
    for i in range(len(outcome.rows)):
        if (
            i == outcome.best_iteration
            or not (outcome.layout.candidate(i) / "result.json").exists()
        ):
            continue
        res = ScoreResult.model_validate_json(
            (outcome.layout.candidate(i) / "result.json").read_text()
        )
        expected += sum(r["status"] != "stable" for r in res.details["md_replicas"])
    assert len(failed) == expected


def test_html_has_header_reasons_and_images(real_run) -> None:
    _, outcome, page = real_run
    root = outcome.layout.root
    assert page == root / "report.html"
    text = page.read_text()
    for row in ledger_decisions(root):
        assert html.escape(row.reason) in text
        assert html.escape(row.hypothesis) in text
    _, spec_hash = load_spec(root / "scorecard.yaml")
    assert spec_hash in text and "cu-emt-tiny" in text and "tiny-report" in text
    images = re.findall(r"<img src='([^']+)'", text)
    assert len(images) == 4  # no token figure: the rule-based agent spends no tokens
    assert "none (the agent made no LLM calls)" in text
    # The campaign named no validation suite: the report says so plainly.
    assert "was accepted by the scorecard but not validated" in text
    for src in images:
        assert src.startswith("report/") and src.endswith(".png")
        assert (root / src).is_file() and (root / src).stat().st_size > 1000
    assert "<script" not in text.lower() and "http" not in text.lower()


def test_missing_ledger_or_decisions_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(MlipilotError, match=r"ledger\.sqlite") as err:
        build_report(empty)
    assert str(empty) in str(err.value)
    assert not (empty / "report.html").exists()

    started = tmp_path / "started-run"
    started.mkdir()
    (started / "scorecard.yaml").write_text(yaml.safe_dump(TINY_SPEC))
    with Ledger(started / "ledger.sqlite") as ledger:
        ledger.append(LedgerEvent(campaign="started-run", event="campaign_started"))
    with pytest.raises(MlipilotError, match="no decisions") as err:
        build_report(started)
    assert str(started) in str(err.value)

    with pytest.raises(MlipilotError, match="not a folder"):
        build_report(tmp_path / "nowhere")


def _synthetic_run(root: Path) -> Path:
    """A hand-written ledger: an accepted fix, a failed candidate, a reason full of markup."""
    root.mkdir()
    (root / "scorecard.yaml").write_text(yaml.safe_dump(TINY_SPEC))
    base = Recipe.model_validate(BAD_BASELINE)
    fix = base.patched({"lr": 0.01})
    good = {"energy_mae_meV_per_atom": 10.0, "force_mae_meV_per_A": 100.0}
    good |= {"md_survival_fraction": 1.0, "relative_throughput": 1.0}
    bad = good | {"md_survival_fraction": 0.5}
    with Ledger(root / "ledger.sqlite") as ledger:

        def add(**kw: object) -> None:
            ledger.append(LedgerEvent(campaign=root.name, agent="scripted", **kw))

        add(event="campaign_started", recipe=base.model_dump(), train_hash="tr", test_hash="te")
        for it, recipe in ((0, base), (1, fix), (2, fix.patched({"num_channels": 16}))):
            add(event="proposal", iteration=it, recipe=recipe.model_dump(), hypothesis=f"h{it}")
        add(
            event="decision",
            iteration=0,
            decision="BASELINE",
            reason="baseline <bad> & slow",
            metrics=bad,
            feasible=False,
            violation=0.5,
            composite=0.9,
            hypothesis="h0",
        )
        add(
            event="decision",
            iteration=1,
            decision="ACCEPT",
            reason='feasible "now"',
            metrics=good,
            feasible=True,
            violation=0.0,
            composite=0.9,
            hypothesis="h1",
            patch={"lr": 0.01},
        )
        add(
            event="decision",
            iteration=2,
            decision="REVERT",
            hypothesis="h2 <i>",
            reason="candidate failed: training failed: <killed>",
            patch={"num_channels": 16},
        )
    return root


def test_failed_candidate_and_escaping_on_a_written_ledger(tmp_path: Path) -> None:
    root = _synthetic_run(tmp_path / "synthetic")
    page = build_report(root)
    view = load_run(root)
    bars = report_data.decision_figure(view).bars
    assert [b.category for b in bars] == ["BASELINE", "ACCEPT", "FAILED"]
    assert bars[2].color == "#000000"
    steps = report_data.incumbent_steps(view)
    assert [s.incumbent_iteration for s in steps] == [0, 1, 1]
    assert [s.feasible for s in steps] == [False, True, True]
    diff = report_data.recipe_diff(view)
    assert diff.as_patch() == {"lr": 0.01}
    md = report_data.md_figure(view)
    assert md.traces == []  # no evaluation rows: no traces named, nothing missing either
    text = page.read_text()
    assert "candidate failed: training failed: &lt;killed&gt;" in text
    assert "baseline &lt;bad&gt; &amp; slow" in text and "h2 &lt;i&gt;" in text
    assert "<killed>" not in text and "<bad>" not in text
    assert "iteration 1, feasible" in text
