"""The molecular data set end to end at the quick level (real GFN2-xTB labels, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from mlipilot.data.dataset import file_sha256, open_dataset
from mlipilot.data.extxyz import ENERGY_KEY, FORCES_KEY
from mlipilot.data.molecules import qm7, tasks
from mlipilot.data.molecules.label_store import LabelStore
from mlipilot.data.molecules.levels import Gfn2XtbLevel, PyscfDftLevel
from mlipilot.data.molecules.molecule_list import Molecule
from mlipilot.data.molecules.qm7 import BuildStats, Execution, ensure_qm7, label_configurations
from mlipilot.data.molecules.sampling import SamplingSettings, sample_configurations
from mlipilot.errors import MlipilotError

N_MOLECULES = 5
N_CONFIGS = 2


@pytest.fixture(scope="module")
def quick_set(tmp_path_factory: pytest.TempPathFactory) -> qm7.Qm7Result:
    out = tmp_path_factory.mktemp("qm7") / "quick"
    return ensure_qm7(out, molecules=N_MOLECULES, level="quick", configs_per_molecule=N_CONFIGS)


def test_molecules_are_labelled_at_the_quick_level(quick_set: qm7.Qm7Result) -> None:
    ds = quick_set.dataset
    frames = ds.load("train") + ds.load("test")
    assert len(frames) == N_MOLECULES * N_CONFIGS
    assert quick_set.stats.labels_computed == len(frames)
    assert ds.manifest.params["level"] == "quick"
    assert "GFN2-xTB" in ds.manifest.splits["train"].label_method
    for a in frames:
        assert a.info["level"] == "quick"
        assert "GFN2-xTB" in a.info["label_method"]
        assert a.info[ENERGY_KEY] < 0
        assert np.abs(a.arrays[FORCES_KEY]).max() > 0.1  # sampled off equilibrium
        assert not a.pbc.any()
    # Labels belong to their geometry: relabelling a stored frame gives the stored numbers.
    e, f = Gfn2XtbLevel().label(frames[0].numbers, frames[0].positions)
    assert e == pytest.approx(frames[0].info[ENERGY_KEY], abs=1e-6)
    np.testing.assert_allclose(f, frames[0].arrays[FORCES_KEY], atol=1e-6)


def test_split_by_molecule_with_hashes(quick_set: qm7.Qm7Result) -> None:
    ds = quick_set.dataset
    train = {a.info["mol_id"] for a in ds.load("train")}
    test = {a.info["mol_id"] for a in ds.load("test")}
    assert train and test
    assert not train & test
    assert len(train | test) == N_MOLECULES
    for split, info in ds.manifest.splits.items():
        assert file_sha256(ds.path(split)) == info.sha256
    # A changed split file is refused on open.
    path = ds.path("test")
    original = path.read_bytes()
    try:
        path.write_bytes(original.replace(b"quick", b"quack", 1))
        with pytest.raises(MlipilotError, match="has sha256"):
            open_dataset(ds.root)
    finally:
        path.write_bytes(original)


def test_rerun_reuses_and_refuses_other_settings(quick_set: qm7.Qm7Result) -> None:
    root = quick_set.dataset.root
    again = ensure_qm7(root, molecules=N_MOLECULES, level="quick", configs_per_molecule=N_CONFIGS)
    assert again.stats.labels_computed == 0
    assert again.dataset.manifest == quick_set.dataset.manifest
    with pytest.raises(MlipilotError, match="molecules: on disk 5, asked 6"):
        ensure_qm7(root, molecules=6, level="quick", configs_per_molecule=N_CONFIGS)


def test_killed_job_resumes_without_recomputing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "resume"
    real_save = LabelStore.save_label
    saved: list[int] = []

    def save_then_die(self: LabelStore, atoms: Atoms, energy: float, forces: np.ndarray) -> Atoms:
        if len(saved) == 3:
            raise KeyboardInterrupt  # the job is killed after three finished labels
        saved.append(1)
        return real_save(self, atoms, energy, forces)

    monkeypatch.setattr(LabelStore, "save_label", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ensure_qm7(out, molecules=3, level="quick", configs_per_molecule=2)
    monkeypatch.setattr(LabelStore, "save_label", real_save)
    assert not (out / "manifest.json").exists()
    done = sorted((out / "labels" / "quick").glob("*.xyz"))
    assert len(done) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in done}

    result = ensure_qm7(out, molecules=3, level="quick", configs_per_molecule=2)
    assert result.stats.labels_reused == 3
    assert result.stats.labels_computed == 3
    assert {p: p.stat().st_mtime_ns for p in done} == mtimes
    assert len(result.dataset.load("train")) + len(result.dataset.load("test")) == 6


def _absurd_methane() -> Atoms:
    # One hydrogen 6 Å out: GFN2-xTB's SCF cannot converge this in 30 iterations.
    pos = np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63]])
    pos = np.vstack([pos, [3.5, -3.5, -3.5]])
    atoms = Atoms("CH4", positions=pos)
    atoms.info.update(mol_id="bad", smiles="C", config_id="bad-c000", config_type="absurd")
    return atoms


@pytest.mark.parametrize(
    "level",
    [Gfn2XtbLevel(max_iter=30), PyscfDftLevel(basis="sto-3g", max_cycle=3)],
    ids=["tblite", "pyscf"],
)
def test_scf_failure_is_recorded_and_skipped(tmp_path: Path, level: object) -> None:
    good = sample_configurations(Molecule("w", "O", 1), 0, SamplingSettings(2))
    configs = [good[0], _absurd_methane(), good[1]]
    if isinstance(level, PyscfDftLevel):
        configs = [_absurd_methane()]  # 3 SCF cycles converge nothing: the job must still end
    stats = BuildStats()
    frames = label_configurations(tmp_path, level, configs, Execution(), stats)  # type: ignore[arg-type]
    assert [a.info["config_id"] for a in frames] == [
        c.info["config_id"] for c in configs if c.info["mol_id"] != "bad"
    ]
    assert [f.config_id for f in stats.failures] == ["bad-c000"]
    assert stats.failures[0].kind == "scf_not_converged"
    assert "not converged" in stats.failures[0].reason
    (record,) = (tmp_path / "labels").rglob("bad-c000.*.failed.json")
    assert json.loads(record.read_text())["reason"] == stats.failures[0].reason

    again = BuildStats()
    label_configurations(tmp_path, level, configs, Execution(), again)  # type: ignore[arg-type]
    assert again.labels_computed == 0  # neither labels nor recorded failures are redone
    assert [f.config_id for f in again.failures] == ["bad-c000"]


def test_failed_configuration_is_skipped_and_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole pipeline, with one molecule's configuration swapped for one whose SCF really
    # fails: the job ends, the others are labelled and split, the failure is in the manifest.
    mols = tmp_path / "mols.csv"
    mols.write_text("id,smiles,heavy_atoms\nm1,C,1\nm2,O,1\nm3,N,1\nm4,CC,2\n")
    real_sample = tasks.sample_configurations

    def sample(mol: Molecule, seed: int, settings: SamplingSettings) -> list[Atoms]:
        if mol.mol_id != "m3":
            return real_sample(mol, seed, settings)
        bad = _absurd_methane()
        bad.info.update(mol_id="m3", config_id="m3-c000")
        return [bad]

    monkeypatch.setattr(tasks, "sample_configurations", sample)
    out = tmp_path / "out"
    result = ensure_qm7(
        out,
        molecules=4,
        level=Gfn2XtbLevel(max_iter=30),
        configs_per_molecule=1,
        test_fraction=0.5,
        molecule_list=mols,
    )
    ds = result.dataset
    assert ds.manifest.params["n_failures"] == 1
    (failure,) = json.loads((out / "failures.json").read_text())
    assert failure["config_id"] == "m3-c000"
    assert "SCF not converged in 30" in failure["reason"]
    labelled = {a.info["mol_id"] for a in ds.load("train") + ds.load("test")}
    assert labelled == {"m1", "m2", "m4"}


def test_all_failed_is_an_error_that_says_where(tmp_path: Path) -> None:
    # max_iter=1: no SCF converges, so no split can be written; the message says why.
    with pytest.raises(MlipilotError, match="no labelled configuration for the train split"):
        ensure_qm7(tmp_path, molecules=2, level=Gfn2XtbLevel(max_iter=1), configs_per_molecule=1)
    assert len(list((tmp_path / "labels").rglob("*.failed.json"))) == 2
