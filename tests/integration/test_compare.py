"""Comparing campaigns: the ranking against each ledger's final row, the page, the refusals."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from factories import BAD_BASELINE, TINY_SPEC, write_tiny_campaign

from mlipilot.campaign.loop import run_campaign
from mlipilot.config import load_campaign
from mlipilot.errors import MlipilotError
from mlipilot.ledger import Ledger, LedgerEvent
from mlipilot.recipe import Recipe
from mlipilot.report.compare import build_comparison, ranking
from mlipilot.report.ledger_view import load_run
from mlipilot.scoring.spec import load_spec

pytestmark = pytest.mark.slow

AGENTS = {"cmp-rule": "rule-based", "cmp-random": "random"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real tiny campaigns on the same data and scorecard, one per agent."""
    tmp = tmp_path_factory.mktemp("compare")
    roots = []
    for name, agent in AGENTS.items():
        path = write_tiny_campaign(tmp, name=name, agent=agent)
        campaign, _ = load_campaign(path)
        roots.append(run_campaign(campaign, path, tmp / "runs").layout.root)
    return roots


def finished_row(run_dir: Path) -> LedgerEvent:
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        (row,) = ledger.events("campaign_finished")
    return row


def by_the_rule(run_dirs: list[Path]) -> list[str]:
    def key(run_dir: Path) -> tuple[int, float, str]:
        row = finished_row(run_dir)
        assert row.status == "finished"
        score = row.composite if row.feasible else row.violation
        assert score is not None
        return (0 if row.feasible else 1, score, run_dir.name)

    return [d.name for d in sorted(run_dirs, key=key)]


def test_ranking_follows_the_rule_on_the_final_ledger_rows(runs: list[Path]) -> None:
    rows = ranking([load_run(d) for d in runs])
    assert [r.campaign for r in rows] == by_the_rule(runs)
    assert [r.rank for r in rows] == [1, 2]
    _, spec_hash = load_spec(runs[0] / "scorecard.yaml")
    for row in rows:
        root = next(d for d in runs if d.name == row.campaign)
        final = finished_row(root)
        assert row.feasible == final.feasible
        if final.feasible:
            assert row.composite == pytest.approx(final.composite)
        else:
            assert row.violation == pytest.approx(final.violation)
        assert row.wall_s == pytest.approx(final.duration_s)
        assert row.spec_hash == spec_hash and row.spec_name == "cu-emt-tiny"
        with Ledger(root / "ledger.sqlite") as ledger:
            (started,) = ledger.events("campaign_started")
            decisions = ledger.events("decision")
        assert row.agent == started.agent
        assert (row.tokens, row.llm_calls) == (0, 0)  # neither agent has a model
        assert row.iterations_done == sum(1 for d in decisions if d.iteration) == 2
        assert row.accepted == sum(
            1 for d in decisions if d.decision == "ACCEPT" and d.metrics is not None
        )
        feasible_changes = [
            d.iteration
            for d in decisions
            if d.decision in ("BASELINE", "ACCEPT") and d.metrics is not None and d.feasible
        ]
        assert row.first_feasible_iteration == (feasible_changes[0] if feasible_changes else None)
    assert {r.agent for r in rows} == set(AGENTS.values())


def test_page_names_both_campaigns_and_has_its_figures(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "site" / "compare.html"
    assert build_comparison(runs, out) == out
    text = out.read_text()
    for root in runs:
        assert root.name in text
    images = re.findall(r"<img src='([^']+)'", text)
    # No agent spent LLM tokens: no tokens figure, the table's column says "0 (no LLM)".
    assert images == ["compare_files/incumbents.png"]
    for src in images:
        assert (out.parent / src).is_file() and (out.parent / src).stat().st_size > 1000
    # Neither agent has a model: both spend no tokens, and the table says so.
    assert text.count("<td class='num'>0 (no LLM)</td>") == 2
    _, spec_hash = load_spec(runs[0] / "scorecard.yaml")
    assert spec_hash[:12] in text
    assert "<script" not in text.lower() and "http" not in text.lower()


def _written_run(root: Path, spec: dict, test_hash: str, outcome: tuple[bool, float]) -> Path:
    """A hand-written run folder: a scorecard and a baseline decision, nothing else."""
    root.mkdir()
    (root / "scorecard.yaml").write_text(yaml.safe_dump(spec))
    feasible, value = outcome
    base = Recipe.model_validate(BAD_BASELINE)
    with Ledger(root / "ledger.sqlite") as ledger:

        def add(**kw: object) -> None:
            ledger.append(LedgerEvent(campaign=root.name, agent="scripted", **kw))

        add(
            event="campaign_started", recipe=base.model_dump(), train_hash="tr", test_hash=test_hash
        )
        add(event="proposal", iteration=0, recipe=base.model_dump(), hypothesis="baseline")
        add(
            event="decision",
            iteration=0,
            decision="BASELINE",
            reason="baseline",
            metrics={"energy_mae_meV_per_atom": 1.0},
            feasible=feasible,
            composite=value if feasible else 9.0,
            violation=0.0 if feasible else value,
        )
    return root


def test_different_scorecard_or_test_split_is_refused(runs: list[Path], tmp_path: Path) -> None:
    real = runs[0]
    with Ledger(real / "ledger.sqlite") as ledger:
        (started,) = ledger.events("campaign_started")
    test_hash = started.test_hash
    assert test_hash
    stricter = yaml.safe_load(yaml.safe_dump(TINY_SPEC))
    stricter["constraints"][0]["max"] = 20.0
    other_spec = _written_run(tmp_path / "other-spec", stricter, test_hash, (True, 1.0))
    with pytest.raises(MlipilotError, match="different scorecards") as err:
        build_comparison([real, other_spec], tmp_path / "x.html")
    assert str(real) in str(err.value) and str(other_spec) in str(err.value)
    assert load_spec(real / "scorecard.yaml")[1] in str(err.value)
    assert not (tmp_path / "x.html").exists()

    other_split = _written_run(tmp_path / "other-split", TINY_SPEC, "another-test", (True, 1.0))
    shutil.copyfile(real / "scorecard.yaml", other_split / "scorecard.yaml")
    with pytest.raises(MlipilotError, match="different test splits") as err:
        build_comparison([real, other_split], tmp_path / "x.html")
    assert str(real) in str(err.value) and str(other_split) in str(err.value)
    assert "another-test" in str(err.value)


def test_no_run_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MlipilotError, match="at least one"):
        build_comparison([], tmp_path / "x.html")
    with pytest.raises(MlipilotError, match="at least one"):
        ranking([])


def test_infeasible_after_feasible_and_ties_by_name(tmp_path: Path) -> None:
    outcomes = {
        "d-infeasible-far": (False, 2.0),
        "c-infeasible-near": (False, 0.5),
        "b-feasible-tie": (True, 3.0),
        "a-feasible-tie": (True, 3.0),
        "e-feasible-best": (True, 1.0),
    }
    views = [load_run(_written_run(tmp_path / n, TINY_SPEC, "t", o)) for n, o in outcomes.items()]
    rows = ranking(views)
    assert [r.campaign for r in rows] == [
        "e-feasible-best",
        "a-feasible-tie",
        "b-feasible-tie",
        "c-infeasible-near",
        "d-infeasible-far",
    ]
    assert [r.first_feasible_iteration for r in rows] == [0, 0, 0, None, None]
