"""A molecular campaign end to end: QM7-like data built from the campaign file, real MACE
training on non-periodic molecules, and the molecular MD tests in the scorecard."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from factories import BAD_BASELINE

from mlipilot.campaign.loop import run_campaign
from mlipilot.config import load_campaign
from mlipilot.data.dataset import open_dataset
from mlipilot.ledger import Ledger
from mlipilot.model_files import PACKAGE_NAME, read_package
from mlipilot.scoring.result import ScoreResult

pytestmark = pytest.mark.slow

MOLECULAR_SPEC = {
    "name": "qm7-tiny",
    "version": 1,
    "md": {
        "start_frames": [0],
        "temperatures_K": [300],
        "seeds": [0],
        "nvt_steps": 40,
        "nve_steps": 10,
        "timestep_fs": 0.5,
        "friction_per_fs": 0.01,
        "min_distance_A": 0.6,
        "max_temperature_factor": 3.0,
        "max_energy_drift_meV_per_atom_per_ps": 1000.0,
        "trace_every": 10,
        "molecular": {"max_bond_deviation_A": 0.5},
    },
    "throughput": {"md_steps": 5, "repeats": 1},
    "constraints": [
        {"metric": "energy_mae_kcal_per_mol", "max": 15.0, "unit": "kcal/mol"},
        {"metric": "force_mae_kcal_per_mol_per_A", "max": 8.0, "unit": "kcal/mol/Å"},
        {"metric": "md_survival_fraction", "min": 1.0, "unit": "fraction"},
    ],
    "composite_weights": {"energy_mae_kcal_per_mol": 1.0, "force_mae_kcal_per_mol_per_A": 1.0},
}


def test_a_qm7_campaign_builds_its_data_trains_on_molecules_and_tests_bonds(
    tmp_path: Path,
) -> None:
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(MOLECULAR_SPEC, allow_unicode=True))
    campaign_file = tmp_path / "qm7-tiny.yaml"
    campaign_file.write_text(
        yaml.safe_dump(
            {
                "name": "qm7-tiny",
                "data": {"kind": "qm7", "path": "data", "molecules": 8, "level": "quick"},
                "scorecard": "spec.yaml",
                "baseline": BAD_BASELINE,
                "agent": {"kind": "rule-based"},
                "budget": {"iterations": 1, "epochs": 2, "max_train_seconds": 300},
            }
        )
    )
    campaign, _ = load_campaign(campaign_file)
    outcome = run_campaign(campaign, campaign_file, tmp_path / "runs")

    # The data set was built from the campaign file: sampled, labelled at the quick level.
    dataset = open_dataset(tmp_path / "data")
    assert dataset.manifest.params["level"] == "quick"
    assert dataset.manifest.params["molecules"] == 8
    train, test = dataset.load("train"), dataset.load("test")
    assert not {a.info["mol_id"] for a in train} & {a.info["mol_id"] for a in test}
    assert not any(a.pbc.any() for a in train + test)

    with Ledger(outcome.layout.ledger) as ledger:
        start = ledger.events("campaign_started")[0]
        assert (start.train_hash, start.test_hash) == (dataset.hash("train"), dataset.hash("test"))
        assert [t.status for t in ledger.events("training")] == ["ok", "ok"]

    baseline = ScoreResult.model_validate_json(
        (outcome.layout.candidate(0) / "result.json").read_text()
    )
    # E0s of zero on molecules of hundreds of eV: the baseline is hopeless on energy.
    assert not baseline.feasible
    assert baseline.metrics["energy_mae_kcal_per_mol"] > 100.0
    # The model embeds every element of the training split (H, C, N, O and maybe S).
    model_elements = _model_elements(outcome.layout.candidate(0) / PACKAGE_NAME)
    assert model_elements == dataset.atomic_numbers("train")
    assert {1, 6, 7, 8} <= set(model_elements)
    # The molecular tests ran on the test molecule: bonds measured, outcome recorded.
    (replica,) = baseline.details["md_replicas"]
    assert replica["max_bond_deviation_A"] is not None
    assert baseline.metrics["md_max_bond_deviation_A"] == replica["max_bond_deviation_A"]


def _model_elements(model_path: Path) -> list[int]:
    return sorted(int(z) for z in read_package(model_path).atomic_numbers)
