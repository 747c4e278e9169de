"""The shipped B3LYP/6-31G(d) data set: whole, as its manifest says, and its labels are what a
fresh PySCF calculation gives for a sample of its frames (the smallest, to keep it to seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlipilot.config import load_campaign
from mlipilot.data.campaign_data import ensure_campaign_data
from mlipilot.data.extxyz import ENERGY_KEY, FORCES_KEY
from mlipilot.data.molecules.levels import PyscfDftLevel, get_level
from mlipilot.data.molecules.shipped import SHIPPED_DIR

REPO = Path(__file__).resolve().parents[2]
SAMPLE = 3  # frames relabelled: one of each of the three smallest molecules, ~1-3 s each
# SCF converged to 1e-9 Ha on both sides: energies agree to ~1e-7 eV; forces to ~1e-5 eV/Å.
ENERGY_TOLERANCE = 1e-4  # eV
FORCE_TOLERANCE = 1e-3  # eV/Å


@pytest.fixture(scope="module")
def b3lyp_set(tmp_path_factory: pytest.TempPathFactory):
    """The example campaign's data, as a user gets it: unpacked from the package."""
    campaign, _ = load_campaign(REPO / "examples" / "qm7-b3lyp.yaml")
    config = campaign.data.model_copy(update={"path": tmp_path_factory.mktemp("b3lyp") / "d"})
    return ensure_campaign_data(config)


def test_the_example_campaign_unpacks_the_shipped_set(b3lyp_set) -> None:
    manifest = b3lyp_set.manifest
    assert (SHIPPED_DIR / "qm7-b3lyp").is_dir()
    assert manifest.params["level"] == PyscfDftLevel.name
    assert manifest.params["molecules"] >= 200
    assert manifest.params["configs_per_molecule"] >= 4
    assert not (b3lyp_set.root / "labels").exists()  # unpacked, not computed
    train = {a.info["mol_id"] for a in b3lyp_set.load("train")}
    test = {a.info["mol_id"] for a in b3lyp_set.load("test")}
    assert train and test and not train & test  # split by molecule
    frames = b3lyp_set.n_frames("train") + b3lyp_set.n_frames("test")
    failures = manifest.params["n_failures"]
    assert (
        frames + failures == manifest.params["molecules"] * manifest.params["configs_per_molecule"]
    )


def test_a_sample_of_shipped_labels_matches_a_fresh_pyscf_calculation(b3lyp_set) -> None:
    level = get_level("b3lyp/6-31g*")
    frames = b3lyp_set.load("train") + b3lyp_set.load("test")
    by_size = sorted(frames, key=lambda a: (len(a), a.info["config_id"]))
    first_of = {a.info["mol_id"]: a for a in reversed(by_size)}  # each molecule's first frame
    smallest = sorted(first_of.values(), key=lambda a: (len(a), a.info["config_id"]))[:SAMPLE]
    for frame in smallest:
        assert "B3LYP" in frame.info["label_method"]
        energy, forces = level.label(frame.numbers, frame.positions)
        assert energy == pytest.approx(frame.info[ENERGY_KEY], abs=ENERGY_TOLERANCE)
        np.testing.assert_allclose(forces, frame.arrays[FORCES_KEY], atol=FORCE_TOLERANCE)


def test_a_stress_loss_on_molecules_is_refused_before_any_training(
    b3lyp_set, tmp_path: Path
) -> None:
    """Molecules have no cell and no stress: mace would fill zeros at weight zero and train
    ``loss=stress`` as ``weighted`` under another name. The campaign refuses it, naming why."""
    from mlipilot.campaign.loop import run_campaign
    from mlipilot.errors import MlipilotError

    assert not b3lyp_set.has_stress("train")
    path = REPO / "examples" / "qm7-b3lyp.yaml"
    campaign, _ = load_campaign(path)
    campaign = campaign.model_copy(
        update={
            "data": campaign.data.model_copy(update={"path": b3lyp_set.root}),
            "baseline": campaign.baseline.patched({"loss": "stress"}),
        }
    )
    with pytest.raises(MlipilotError, match=r"baseline: loss=stress .* has none"):
        run_campaign(campaign, path, tmp_path / "runs")
    assert not list((tmp_path / "runs").glob("*/candidates/it000/mace"))  # nothing trained
