"""The iteration tables (console and report) show the metrics the scorecard constrains."""

from __future__ import annotations

from pathlib import Path

from mlipilot.campaign.console import iterations_table
from mlipilot.campaign.reporting import IterationRow
from mlipilot.scoring.spec import load_spec, table_metrics

SCORECARDS = Path(__file__).resolve().parents[2] / "scorecard"


def test_each_shipped_scorecard_gets_its_own_columns_in_its_units() -> None:
    cu = table_metrics(load_spec(SCORECARDS / "cu-emt.yaml")[0])
    qm7 = table_metrics(load_spec(SCORECARDS / "qm7.yaml")[0])
    assert list(cu) == [
        "energy_mae_meV_per_atom",
        "force_mae_meV_per_A",
        "md_survival_fraction",
        "relative_throughput",
    ]
    assert list(qm7) == [
        "energy_mae_kcal_per_mol",
        "force_mae_kcal_per_mol_per_A",
        "md_survival_fraction",
        "relative_throughput",
    ]
    assert qm7["energy_mae_kcal_per_mol"] == "E MAE\nkcal/mol"


def test_the_console_table_shows_the_columns_it_is_given() -> None:
    columns = table_metrics(load_spec(SCORECARDS / "qm7.yaml")[0])
    row = IterationRow(
        iteration=0,
        hypothesis="baseline",
        changed={},
        metrics={"energy_mae_kcal_per_mol": 3288.0, "energy_mae_meV_per_atom": 10375.0},
        feasible=False,
        composite=1.0,
        violation=2.0,
        verdict="BASELINE",
        reason="infeasible",
    )
    table = iterations_table([row], columns)
    headers = [str(c.header) for c in table.columns]
    assert "E MAE\nkcal/mol" in headers and "E MAE\nmeV/at" not in headers
    energy = table.columns[headers.index("E MAE\nkcal/mol")]
    assert list(energy.cells) == ["3.29e+03"]
