"""A campaign validates its best model (and, when asked, every accepted one) with the suite it
names; the results go to the ledger, the candidate's folder, the summary and the report, and
never to the agent. A real tiny campaign; the suite is the Cu suite's cheap groups (its
equation of state and smoothness), so the stage is seconds, not minutes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from factories import write_tiny_campaign

from mlipilot.campaign.loop import run_campaign
from mlipilot.config import load_campaign
from mlipilot.data.dataset import file_sha256
from mlipilot.ledger import Ledger
from mlipilot.report import build_report
from mlipilot.validation.suite import SUITES_DIR, load_suite

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("validated")
    suite = yaml.safe_load((SUITES_DIR / "cu-emt.yaml").read_text())
    cheap = {
        k: v
        for k, v in suite.items()
        if k not in ("elastic", "vacancy", "surfaces", "phonons", "heating_ramp", "nve")
    }
    (tmp / "cheap-suite.yaml").write_text(yaml.safe_dump(cheap))
    path = write_tiny_campaign(tmp, name="validated", data_path=tmp / "data", iterations=1)
    doc = yaml.safe_load(path.read_text())
    doc["validation"] = {"suite": "cheap-suite.yaml", "accepts": True}
    path.write_text(yaml.safe_dump(doc))
    campaign, _ = load_campaign(path)
    outcome = run_campaign(campaign, path, tmp / "runs")
    return tmp, campaign, outcome


def test_the_best_model_is_validated_and_recorded(validated_run) -> None:
    tmp, _, outcome = validated_run
    best = outcome.rows[outcome.best_iteration].candidate
    with Ledger(outcome.layout.ledger) as ledger:
        rows = ledger.events("validation")
        decisions = ledger.events("decision")
    accepted = [d.candidate for d in decisions if d.decision == "ACCEPT"]
    # One row per validated candidate: the accepted ones (accepts: true) and the best, which
    # is validated once even when it was validated on acceptance.
    assert [r.candidate for r in rows] == accepted + ([best] if best not in accepted else [])
    final = rows[-1] if best not in accepted else next(r for r in rows if r.candidate == best)
    spec, sha = load_suite(tmp / "cheap-suite.yaml")
    assert final.detail["sha256"] == sha == file_sha256(tmp / "cheap-suite.yaml")
    assert [c["metric"] for c in final.detail["checks"]] == list(spec.checks())
    assert final.status in ("passed", "failed") and final.detail["total"] == len(spec.checks())
    assert sorted(final.detail["failed"]) == sorted(
        c["metric"] for c in final.detail["checks"] if not c["passed"]
    )
    folder = outcome.layout.candidate_dir(best)
    result = json.loads((folder / "validation.json").read_text())
    assert result["suite"]["sha256"] == sha
    assert (folder / "validation.html").is_file()
    assert outcome.validation is not None and outcome.validation.candidate == best
    summary = json.loads(outcome.layout.summary.read_text())
    assert summary["validation"]["status"] == final.status
    assert summary["validation"]["passed"] == final.detail["passed"]
    # The last rows: the validation before the campaign's end.
    assert rows[-1].id < ledger_end(outcome.layout.ledger)


def ledger_end(path: Path) -> int:
    with Ledger(path) as ledger:
        (end,) = ledger.events("campaign_finished")
    assert end.id is not None
    return end.id


def test_the_report_shows_validation_beside_the_scorecard(validated_run) -> None:
    _, _, outcome = validated_run
    text = build_report(outcome.layout.root).read_text()
    assert "Validation (physics the scorecard never sees)" in text
    best = outcome.rows[outcome.best_iteration].candidate
    assert f"candidates/{best}/validation.html" in text
    assert "but not validated" not in text
