"""A ledger written before the typed ledger (mlipilot at ae83716: the QM7 quick campaign, rule-
based, on this project's CPU) still reads, reports and resumes: the JSON ``detail`` column is
read through the typed models now, and nothing of it may be lost or misread.

``tests/data/ledger-before-typed/`` holds that run's ``ledger.sqlite`` (vacuumed) and the
``scorecard.yaml`` it ran; the model files it names are not shipped.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from mlipilot.campaign.resume import read_prior_run
from mlipilot.ledger import CampaignHistory, Ledger, check_chain, read_events, score_result
from mlipilot.ledger.events import EvaluationDetail, TrainingDetail, ValidationDetail
from mlipilot.report.build import build_report
from mlipilot.report.ledger_view import load_run

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "ledger-before-typed"


def test_its_history_reads_every_row_as_it_was_written() -> None:
    events = read_events(FIXTURE / "ledger.sqlite")
    history = CampaignHistory.of(events)
    assert history.ending is not None and history.ending.status == "finished"
    assert history.setting("budget", "iterations") == 10
    assert history.setting("data", "kind") == "qm7"
    for decision in history.decisions:
        if decision.metrics is None:
            continue
        result = score_result(history.evaluations[decision.candidate])
        assert result.composite == decision.composite and result.feasible == decision.feasible
        assert result.spec_name == "qm7" and result.constraints
        assert result.details["md_replicas"]
    training = history.trainings["it001"].details(TrainingDetail)
    assert training.model and training.model.endswith("model-package.pt")
    assert [e["epoch"] for e in training.curve] == list(range(-1, 10))  # before, then 10
    evaluation = history.evaluations["it001"].details(EvaluationDetail)
    assert evaluation.timings_s and evaluation.hardware
    [validation] = history.validations
    checks = validation.details(ValidationDetail)
    assert checks.suite == "qm7" and checks.total == 6 and len(checks.checks) == 6


def test_it_reports(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    page = build_report(run)
    text = page.read_text()
    view = load_run(run)
    assert view.campaign_setting("name") == "qm7-quick"
    for decision in view.decisions:
        assert decision.candidate in text
    assert "qm7 v1" in text  # the validation section


def test_an_unfinished_prefix_of_it_resumes(tmp_path: Path) -> None:
    """The rows up to it003's training, as a kill would have left them (its scoring not yet
    written): the recorded proposals are replayed and it003 is trained again."""
    source = FIXTURE / "ledger.sqlite"
    events = read_events(source)
    cut = next(e.id for e in events if e.event == "training" and e.candidate == "it003")
    run = tmp_path / "run"
    run.mkdir()
    with Ledger(run / "ledger.sqlite"):  # the schema and its triggers
        pass
    conn = sqlite3.connect(f"file:{run / 'ledger.sqlite'}", uri=True)
    try:
        conn.execute("ATTACH DATABASE ? AS old", (f"file:{source}?mode=ro",))
        with conn:
            conn.execute("INSERT INTO events SELECT * FROM old.events WHERE id <= ?", (cut,))
    finally:
        conn.close()
    check_chain(run / "ledger.sqlite")  # a prefix of a chain is a chain
    prefix = read_events(run / "ledger.sqlite")
    prior = read_prior_run(run, prefix)
    assert sorted(prior.proposals) == [0, 1, 2, 3]
    recorded = {e.candidate: e for e in prefix if e.event == "proposal"}
    assert prior.proposals[2][0].patch == recorded["it002"].patch
    assert prior.proposals[2][0].hypothesis == recorded["it002"].hypothesis
    assert prior.decided == {"it000", "it001", "it002"}
    assert "it003" in prior.in_flight  # trained, never scored: trained again


def test_validate_finds_a_run_folders_incumbent_through_its_ledger(tmp_path: Path) -> None:
    from mlipilot.errors import MlipilotError
    from mlipilot.validation.command import resolve_model

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    with pytest.raises(MlipilotError, match=r"the incumbent is it005, but .* is not there"):
        resolve_model(run)
    package = run / "candidates" / "it005" / "model-package.pt"
    package.parent.mkdir(parents=True)
    package.write_bytes(b"a package")
    assert resolve_model(run) == package
