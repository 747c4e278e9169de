"""The report with several candidates per iteration: every lookup goes by candidate name.

A hand-written ledger (no training): iterations 1 and 2 with two candidates each; it001-2 is
accepted over it001-1, it002-1 is a duplicate answered from it001-1's training, it002-2 fails.
Progress and iteration_started rows are mixed in, as a real campaign writes them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from mlipilot.ledger import Ledger, LedgerEvent
from mlipilot.recipe import Recipe
from mlipilot.report import build_report
from mlipilot.report import data as report_data
from mlipilot.report.compare import ranking
from mlipilot.report.ledger_view import RunView, load_run

SCORECARD = Path(__file__).resolve().parents[2] / "scorecard" / "cu-emt.yaml"

BASE = Recipe()
REC_1_1 = BASE.patched({"lr": 0.005})
REC_1_2 = BASE.patched({"num_channels": 32, "ema": True})
REC_2_2 = REC_1_2.patched({"r_max": 4.5})


def _metrics(e_mae: float, f_mae: float, survival: float) -> dict[str, float]:
    return {
        "energy_mae_meV_per_atom": e_mae,
        "force_mae_meV_per_A": f_mae,
        "md_survival_fraction": survival,
        "relative_throughput": 1.0,
    }


M_BASE = _metrics(40.0, 90.0, 1.0)  # infeasible
M_1_1 = _metrics(30.0, 55.0, 0.5)  # infeasible: a replica collapsed
M_1_2 = _metrics(20.0, 40.0, 1.0)  # feasible: accepted

TRACE = "time_ps,temperature_K,total_eV,min_distance_A\n0.0,600,-1.0,2.3\n0.1,610,-1.0,2.2\n"


def _replica(name: str, status: str = "stable") -> dict[str, Any]:
    return {"trace_file": name, "status": status}


def _write_traces(root: Path, candidate: str, names: list[str]) -> None:
    md = root / "candidates" / candidate / "md"
    md.mkdir(parents=True)
    for name in names:
        (md / name).write_text(TRACE)


def _candidate_run(root: Path) -> Path:
    root.mkdir()
    shutil.copyfile(SCORECARD, root / "scorecard.yaml")
    budget = {"iterations": 2, "epochs": 3, "candidates_per_iteration": 2}
    campaign = {"name": "cands", "budget": budget}
    with Ledger(root / "ledger.sqlite") as ledger:

        def add(**kw: Any) -> None:
            ledger.append(LedgerEvent(campaign=root.name, agent="scripted", **kw))

        def proposal(it: int, name: str, recipe: Recipe, hyp: str, **kw: Any) -> None:
            add(
                event="proposal",
                iteration=it,
                candidate=name,
                hypothesis=hyp,
                patch=BASE.diff(recipe) or None,
                recipe=recipe.model_dump(),
                recipe_hash=recipe.digest(),
                **kw,
            )

        def progress(it: int, name: str) -> None:
            add(event="progress", iteration=it, candidate=name, status="train", detail={"done": 1})

        def evaluation(it: int, name: str, metrics: dict[str, float], replicas: list) -> None:
            add(
                event="evaluation",
                iteration=it,
                candidate=name,
                status="scored",
                metrics=metrics,
                detail={"md_replicas": replicas},
            )

        def decision(it: int, name: str, verdict: str, metrics: dict | None, **kw: Any) -> None:
            scored = {}
            if metrics is not None:
                scored = {"metrics": metrics, "feasible": kw.pop("feasible")}
                scored |= {"composite": kw.pop("composite"), "violation": kw.pop("violation")}
            add(event="decision", iteration=it, candidate=name, decision=verdict, **scored, **kw)

        add(
            event="campaign_started",
            recipe=BASE.model_dump(),
            train_hash="tr",
            test_hash="te",
            detail={"campaign": campaign},
        )
        add(event="iteration_started", iteration=0, candidate="it000")
        proposal(0, "it000", BASE, "baseline recipe")
        progress(0, "it000")
        add(event="training", iteration=0, candidate="it000", status="ok")
        evaluation(0, "it000", M_BASE, [_replica("base.csv")])
        decision(
            0,
            "it000",
            "BASELINE",
            M_BASE,
            feasible=False,
            composite=2.0,
            violation=0.8,
            reason="baseline is infeasible",
            hypothesis="baseline recipe",
        )

        add(event="iteration_started", iteration=1, detail={"candidates": 2})
        proposal(1, "it001-1", REC_1_1, "lower lr")
        proposal(1, "it001-2", REC_1_2, "wider with ema")
        for name in ("it001-1", "it001-2", "it001-1"):
            progress(1, name)
        add(event="training", iteration=1, candidate="it001-1", status="ok")
        add(event="training", iteration=1, candidate="it001-2", status="ok")
        evaluation(1, "it001-2", M_1_2, [_replica("a.csv"), _replica("b.csv")])
        evaluation(1, "it001-1", M_1_1, [_replica("a.csv"), _replica("c.csv", "min_distance")])
        decision(
            1,
            "it001-1",
            "REVERT",
            M_1_1,
            feasible=False,
            composite=1.5,
            violation=0.5,
            reason="it001-2 ranked first this iteration",
            hypothesis="lower lr",
            patch={"lr": 0.005},
        )
        decision(
            1,
            "it001-2",
            "ACCEPT",
            M_1_2,
            feasible=True,
            composite=1.2,
            violation=0.0,
            reason="feasible; incumbent was infeasible",
            hypothesis="wider with ema",
            patch={"num_channels": 32, "ema": True},
        )

        add(event="iteration_started", iteration=2, detail={"candidates": 2})
        proposal(
            2,
            "it002-1",
            REC_1_1,
            "lower lr again",
            status="duplicate",
            detail={"duplicate_of": "it001-1"},
        )
        proposal(2, "it002-2", REC_2_2, "shorter cutoff")
        progress(2, "it002-2")
        add(event="training", iteration=2, candidate="it002-2", status="failed", reason="NaN")
        add(event="evaluation", iteration=2, candidate="it002-2", status="failed", reason="NaN")
        decision(
            2,
            "it002-1",
            "REVERT",
            M_1_1,
            feasible=False,
            composite=1.5,
            violation=0.5,
            reason="same training as it001-1, not retrained; violation not below",
            hypothesis="lower lr again",
            patch={"lr": 0.005},
        )
        decision(
            2,
            "it002-2",
            "REVERT",
            None,
            reason="candidate failed: training failed: NaN",
            hypothesis="shorter cutoff",
            patch={"r_max": 4.5},
        )
        add(event="campaign_finished", status="finished", duration_s=12.0)
    _write_traces(root, "it000", ["base.csv"])
    _write_traces(root, "it001-1", ["a.csv", "c.csv"])
    _write_traces(root, "it001-2", ["a.csv", "b.csv"])
    return root


@pytest.fixture
def view(tmp_path: Path) -> RunView:
    return load_run(_candidate_run(tmp_path / "cands"))


def test_lookups_are_keyed_by_candidate(view: RunView) -> None:
    assert [d.candidate for d in view.decisions] == [
        "it000",
        "it001-1",
        "it001-2",
        "it002-1",
        "it002-2",
    ]
    assert set(view.proposals) == {"it000", "it001-1", "it001-2", "it002-1", "it002-2"}
    assert set(view.evaluations) == {"it000", "it001-1", "it001-2"}  # it002-2 failed
    assert view.baseline == BASE
    assert view.recipe_of("it001-1") == REC_1_1
    assert view.recipe_of("it001-2") == REC_1_2
    assert view.recipe_of("it002-2") == REC_2_2
    assert view.trained_candidate("it001-2") == "it001-2"
    assert view.trained_candidate("it002-1") == "it001-1"
    assert view.evaluation_of("it001-1").metrics == M_1_1
    assert view.evaluation_of("it001-2").metrics == M_1_2
    assert view.evaluation_of("it002-1") is view.evaluations["it001-1"]
    assert view.evaluation_of("it002-2") is None


def test_incumbent_is_tracked_by_candidate(view: RunView) -> None:
    steps = report_data.incumbent_steps(view)
    assert [(s.iteration, s.candidate) for s in steps] == [
        (0, "it000"),
        (1, "it001-1"),
        (1, "it001-2"),
        (2, "it002-1"),
        (2, "it002-2"),
    ]
    assert [s.incumbent_candidate for s in steps] == [
        "it000",
        "it000",
        "it001-2",
        "it001-2",
        "it001-2",
    ]
    assert [s.incumbent_iteration for s in steps] == [0, 0, 1, 1, 1]
    assert [s.feasible for s in steps] == [False, False, True, True, True]
    h = report_data.header(view)
    assert (h.best_iteration, h.best_candidate, h.best_composite) == (1, "it001-2", 1.2)
    assert (h.iterations_done, h.candidates_done, h.iterations_planned) == (2, 4, 2)


def test_recipe_diff_is_the_accepted_candidates(view: RunView) -> None:
    diff = report_data.recipe_diff(view)
    assert (diff.incumbent_iteration, diff.incumbent_candidate) == (1, "it001-2")
    assert diff.as_patch() == BASE.diff(REC_1_2) == {"num_channels": 32, "ema": True}
    assert [(s.iteration, s.candidate, s.hypothesis) for s in diff.path] == [
        (1, "it001-2", "wider with ema")
    ]


def test_table_has_a_row_per_candidate_with_its_own_metrics(view: RunView) -> None:
    rows = {r.candidate: r for r in report_data.iteration_table(view)}
    assert list(rows) == ["it000", "it001-1", "it001-2", "it002-1", "it002-2"]
    assert rows["it001-1"].iteration == rows["it001-2"].iteration == 1
    assert rows["it001-1"].metrics == M_1_1 and rows["it001-1"].decision == "REVERT"
    assert rows["it001-2"].metrics == M_1_2 and rows["it001-2"].decision == "ACCEPT"
    assert rows["it001-1"].hypothesis == "lower lr"
    assert rows["it001-2"].changed == {"num_channels": 32, "ema": True}
    assert rows["it002-2"].failed and rows["it002-2"].metrics == {}
    bars = report_data.decision_figure(view).bars
    assert [(b.iteration, b.category) for b in bars] == [
        (0, "BASELINE"),
        (1, "REVERT"),
        (1, "ACCEPT"),
        (2, "REVERT"),
        (2, "FAILED"),
    ]


def test_md_traces_come_from_the_candidates_folders(view: RunView) -> None:
    md = report_data.md_figure(view)
    assert (md.incumbent_iteration, md.incumbent_candidate) == (1, "it001-2")
    assert not md.missing
    mine = [(t.name, t.candidate, t.replica) for t in md.traces if t.role == "incumbent"]
    assert mine == [("it001-2", "it001-2", "a.csv"), ("it001-2", "it001-2", "b.csv")]
    failed = [
        (t.iteration, t.name, t.candidate, t.replica) for t in md.traces if t.role != "incumbent"
    ]
    # it001-1's collapsed replica, once: it002-1 reused that training and has no folder.
    assert failed == [(1, "it001-1", "it001-1", "c.csv")]
    assert md.traces[0].time_ps == [0.0, 0.1]


def test_md_figure_names_the_incumbents_folder_when_missing(tmp_path: Path) -> None:
    root = _candidate_run(tmp_path / "cands")
    shutil.rmtree(root / "candidates" / "it001-2")
    md = report_data.md_figure(load_run(root))
    assert md.missing == ["candidates/it001-2/md/a.csv", "candidates/it001-2/md/b.csv"]
    assert [t.candidate for t in md.traces] == ["it001-1"]


def test_comparison_counts_iterations_not_candidates(view: RunView) -> None:
    (row,) = ranking([view])
    assert (row.iterations_done, row.accepted, row.first_feasible_iteration) == (2, 1, 1)
    assert (row.feasible, row.composite) == (True, 1.2)


def test_page_names_the_candidates(tmp_path: Path) -> None:
    page = build_report(_candidate_run(tmp_path / "cands"))
    text = page.read_text()
    assert "iteration 1 (it001-2), feasible, composite 1.200" in text
    assert "Incumbent: iteration 1 (it001-2)." in text
    assert "2 of 2 after the baseline (4 candidates), 3 epochs each" in text
    for name in ("it000", "it001-1", "it001-2", "it002-1", "it002-2"):
        assert f"<td>{name}</td>" in text
    assert "Traces not found" not in text


def _single_candidate_run(root: Path, named: bool) -> Path:
    """One candidate per iteration, as before candidates: names it000, it001, or none at all."""
    root.mkdir()
    shutil.copyfile(SCORECARD, root / "scorecard.yaml")
    fix = BASE.patched({"lr": 0.005})
    with Ledger(root / "ledger.sqlite") as ledger:

        def add(it: int | None = None, **kw: Any) -> None:
            name = f"it{it:03d}" if named and it is not None else None
            ledger.append(LedgerEvent(campaign=root.name, iteration=it, candidate=name, **kw))

        add(event="campaign_started", recipe=BASE.model_dump(), test_hash="te")
        add(0, event="proposal", recipe=BASE.model_dump(), hypothesis="h0")
        add(1, event="proposal", recipe=fix.model_dump(), hypothesis="h1")
        add(0, event="decision", decision="BASELINE", metrics=M_BASE, feasible=False)
        add(1, event="decision", decision="ACCEPT", metrics=M_1_2, feasible=True, composite=1.0)
    return root


@pytest.mark.parametrize("named", [True, False])
def test_one_candidate_per_iteration_reads_as_before(tmp_path: Path, named: bool) -> None:
    view = load_run(_single_candidate_run(tmp_path / "single", named))
    assert set(view.proposals) == {"it000", "it001"}
    assert view.recipe_of("it001") == BASE.patched({"lr": 0.005})
    assert view.trained_candidate("it001") == "it001"
    steps = report_data.incumbent_steps(view)
    assert [(s.incumbent_iteration, s.incumbent_candidate) for s in steps] == [
        (0, "it000"),
        (1, "it001"),
    ]
    assert report_data.recipe_diff(view).as_patch() == {"lr": 0.005}
    assert [r.candidate for r in report_data.iteration_table(view)] == ["it000", "it001"]
    h = report_data.header(view)
    assert (h.iterations_done, h.candidates_done) == (1, 1)
    assert report_data.iteration_label(h.best_iteration, h.best_candidate) == "iteration 1"
