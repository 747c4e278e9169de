"""The report's agreement between scorecard and validation, from validation rows."""

from __future__ import annotations

import shutil
from pathlib import Path

from factories import dashboard_events

from mlipilot.ledger import Ledger, LedgerEvent
from mlipilot.report import build_report
from mlipilot.report import data as report_data
from mlipilot.report.ledger_view import load_run

REPO = Path(__file__).resolve().parents[2]


def _validation(campaign: str, candidate: str, failing: set[str]) -> LedgerEvent:
    checks = [
        {"metric": m, "value": 1.0, "reference": 1.0, "tolerance": "±", "passed": m not in failing}
        for m in ("lattice_constant_A", "c11_GPa", "c12_GPa")
    ]
    return LedgerEvent(
        campaign=campaign,
        event="validation",
        candidate=candidate,
        status="failed" if failing else "passed",
        reason=f"{3 - len(failing)} of 3 checks pass",
        detail={"suite": "cu-emt", "checks": checks},
    )


def _run(tmp_path: Path) -> Path:
    root = tmp_path / "cu-agree-20261205-000000"
    root.mkdir()
    shutil.copyfile(REPO / "scorecard" / "cu-emt.yaml", root / "scorecard.yaml")
    start, baseline, later = dashboard_events(root.name)
    with Ledger(root / "ledger.sqlite") as ledger:
        ledger.append_all(start + baseline + later)
        ledger.append(_validation(root.name, "it000", {"c11_GPa", "c12_GPa"}))
        ledger.append(_validation(root.name, "it001", {"c12_GPa"}))
    return root


def test_the_agreement_names_the_accepts_validation_does_not_confirm(tmp_path: Path) -> None:
    figure = report_data.agreement_figure(load_run(_run(tmp_path)))
    assert figure is not None
    assert figure.candidates == ["it000", "it001"]
    assert figure.accepted == [False, True]  # the baseline was kept, never accepted
    assert figure.checks == ["lattice_constant_A", "c11_GPa", "c12_GPa"]
    assert figure.passed[2] == [False, False] and figure.passed[1] == [False, True]
    assert figure.confirmed == 0
    assert figure.disagreements == [("it001", ["c12_GPa"])]


def test_the_report_draws_it_and_says_where_they_disagree(tmp_path: Path) -> None:
    root = _run(tmp_path)
    page = build_report(root).read_text()
    assert (root / "report" / "agreement.png").stat().st_size > 0
    assert "Scorecard against validation" in page
    assert "Disagreements: it001: c12_GPa." in page


def test_without_validation_there_is_no_agreement_figure(tmp_path: Path) -> None:
    root = tmp_path / "cu-plain-20261205-000000"
    root.mkdir()
    shutil.copyfile(REPO / "scorecard" / "cu-emt.yaml", root / "scorecard.yaml")
    start, baseline, later = dashboard_events(root.name)
    with Ledger(root / "ledger.sqlite") as ledger:
        ledger.append_all(start + baseline + later)
    assert report_data.agreement_figure(load_run(root)) is None
    build_report(root)
    assert not (root / "report" / "agreement.png").exists()
