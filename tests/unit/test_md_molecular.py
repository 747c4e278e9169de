"""Molecular MD stability: bond-length deviation and fragmentation (scoring/md_molecular.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from factories import untrained_mace
from pydantic import ValidationError

from mlipilot.errors import MlipilotError
from mlipilot.model_files import write_package
from mlipilot.scoring.md_molecular import MolecularCheck
from mlipilot.scoring.md_stability import ReplicaJob, ReplicaMonitor, run_md_stability
from mlipilot.scoring.spec import MDSettings, MolecularSettings


def _ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.center(vacuum=5.0)
    atoms.pbc, atoms.cell = False, np.zeros((3, 3))
    return atoms


def _settings(**molecular: float) -> MDSettings:
    return MDSettings(
        start_frames=[0],
        temperatures_K=[800.0],
        seeds=[0],
        nvt_steps=300,
        nve_steps=0,
        timestep_fs=0.5,
        friction_per_fs=0.01,
        min_distance_A=0.3,
        max_temperature_factor=100.0,
        max_energy_drift_meV_per_atom_per_ps=1e6,
        trace_every=50,
        precision="float64",
        molecular=MolecularSettings(**molecular),
    )


def _monitor(frame: Atoms, settings: MDSettings) -> ReplicaMonitor:
    job = ReplicaJob(3, frame, 800.0, 0, Path("unused.csv"))
    return ReplicaMonitor(job, settings, len(frame), io.StringIO())


def _observe(monitor: ReplicaMonitor, step: int, positions: np.ndarray) -> None:
    monitor.observe(
        step,
        temperature_K=800.0,
        potential_eV=0.0,
        kinetic_eV=0.0,
        min_distance_A=1.0,
        finite=True,
        positions=positions,
    )


def _bond(atoms: Atoms, a: str, b: str) -> tuple[int, int]:
    """The first bonded pair of elements a-b (within 1.2 x covalent radii)."""
    check = MolecularCheck.of(atoms, MolecularSettings(), "test")
    for i, j in check.bonds:
        if {atoms[i].symbol, atoms[j].symbol} == {a, b}:
            return (i, j) if atoms[i].symbol == a else (j, i)
    raise AssertionError(f"no {a}-{b} bond")


def test_bonds_of_ethanol_are_its_eight_covalent_bonds() -> None:
    atoms = _ethanol()
    check = MolecularCheck.of(atoms, MolecularSettings(), "test")
    pairs = sorted("".join(sorted(atoms[i].symbol + atoms[j].symbol)) for i, j in check.bonds)
    assert pairs == ["CC", "CH", "CH", "CH", "CH", "CH", "CO", "HO"]
    assert check.start_pieces == 1
    assert check.max_deviation_A(atoms.positions) == 0.0
    assert not check.fragmented(atoms.positions)


def test_a_stretched_bond_is_a_bond_deviation_and_a_vibration_is_not() -> None:
    atoms = _ethanol()
    c, o = _bond(atoms, "C", "O")
    axis = atoms.positions[o] - atoms.positions[c]
    axis /= np.linalg.norm(axis)
    # Move the hydroxyl group (O and its H) along the C-O axis: one bond stretches.
    _, h = _bond(atoms, "O", "H")
    monitor = _monitor(atoms, _settings())
    for step, stretch in enumerate([0.0, 0.2, 0.45]):
        pos = atoms.positions.copy()
        pos[[o, h]] += stretch * axis
        _observe(monitor, step, pos)
        assert monitor.status == "stable", stretch
    pos = atoms.positions.copy()
    pos[[o, h]] += 0.6 * axis
    _observe(monitor, 3, pos)
    outcome = monitor.outcome()
    assert (outcome.status, outcome.survived_steps) == ("bond_deviation", 2)
    assert outcome.max_bond_deviation_A == pytest.approx(0.6)


def test_a_squeezed_bond_is_a_bond_deviation() -> None:
    atoms = _ethanol()
    c1, c2 = _bond(atoms, "C", "C")
    pos = atoms.positions.copy()
    pos[c2] += 0.55 * (pos[c1] - pos[c2]) / np.linalg.norm(pos[c1] - pos[c2])
    monitor = _monitor(atoms, _settings())
    _observe(monitor, 0, pos)
    assert monitor.status == "bond_deviation"


def test_a_group_carried_away_is_a_fragmentation() -> None:
    atoms = _ethanol()
    c, o = _bond(atoms, "C", "O")
    _, h = _bond(atoms, "O", "H")
    axis = (atoms.positions[o] - atoms.positions[c]) / atomic_distance(atoms, c, o)
    pos = atoms.positions.copy()
    pos[[o, h]] += 1.5 * axis  # C...O at 2.9 Å: beyond 1.5 x (0.76 + 0.66) Å
    monitor = _monitor(atoms, _settings())
    _observe(monitor, 0, pos)
    assert monitor.status == "fragmentation"
    # A fragment is named before the bond deviation that comes with it.
    check = MolecularCheck.of(atoms, MolecularSettings(), "test")
    assert check.max_deviation_A(pos) > 0.5 and check.fragmented(pos)


def atomic_distance(atoms: Atoms, i: int, j: int) -> float:
    return float(np.linalg.norm(atoms.positions[i] - atoms.positions[j]))


def test_periodic_start_frames_are_refused_by_name() -> None:
    with pytest.raises(MlipilotError, match=r"MD start frame 3: .*periodic"):
        _monitor(bulk("Cu", cubic=True), _settings())


def test_fragment_factor_must_exceed_bond_factor() -> None:
    with pytest.raises(ValidationError, match=r"fragment_factor 1\.2 must exceed bond_factor 1\.3"):
        MolecularSettings(bond_factor=1.3, fragment_factor=1.2)


@pytest.fixture(scope="module")
def forceless_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MACE for H, C, O whose interaction energy is scaled to zero: no force holds a molecule
    together, as in a model that learned nothing about bonding."""
    model = untrained_mace([1, 6, 8], [-13.6, -1030.0, -2040.0], interaction_scale=0.0)
    path = tmp_path_factory.mktemp("model") / "forceless.model"
    write_package(model, path)
    return path


@pytest.mark.parametrize("engine", ["ase", "batched"])
def test_real_md_catches_a_molecule_flying_apart(
    forceless_model: Path, tmp_path: Path, engine: str
) -> None:
    """Real Langevin MD at 800 K with nothing holding ethanol together: a hydrogen flies off
    within tens of femtoseconds, and the replica fails at that time, on either engine."""
    settings = _settings().model_copy(update={"engine": engine})
    report = run_md_stability(forceless_model, [_ethanol()], settings, tmp_path)
    (rep,) = report.replicas
    assert rep.status == "fragmentation", rep
    assert 0 < rep.survived_steps < settings.nvt_steps
    assert report.metrics["md_survival_fraction"] < 1.0
    assert report.metrics["md_max_bond_deviation_A"] == rep.max_bond_deviation_A
    # Without the fragmentation test, the deviation test catches the same flight a little later.
    deviation_only = _settings(fragment_factor=5.0).model_copy(update={"engine": engine})
    (stretched,) = run_md_stability(
        forceless_model, [_ethanol()], deviation_only, tmp_path / "d"
    ).replicas
    assert stretched.status == "bond_deviation"
    assert rep.survived_steps <= stretched.survived_steps < settings.nvt_steps
    assert stretched.max_bond_deviation_A is not None and stretched.max_bond_deviation_A > 0.5
