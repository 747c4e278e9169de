"""The three measurement stages against a really trained tiny MACE model (Cu, EMT labels)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from factories import scaled_model
from mace.calculators import MACECalculator

from mlipilot.scoring.accuracy import evaluate_accuracy
from mlipilot.scoring.md_stability import TRACE_COLUMNS, run_md_stability
from mlipilot.scoring.spec import AccuracySettings, MDSettings, ThroughputSettings
from mlipilot.scoring.throughput import measure_throughput

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]


def _md_settings(**overrides: object) -> MDSettings:
    values: dict[str, object] = {
        "start_frames": [0],
        "temperatures_K": [300.0],
        "seeds": [0],
        "nvt_steps": 40,
        "nve_steps": 10,
        "timestep_fs": 2.0,
        "friction_per_fs": 0.01,
        "min_distance_A": 1.5,
        "max_temperature_factor": 3.0,
        "max_energy_drift_meV_per_atom_per_ps": 50.0,
        "trace_every": 10,
    }
    values.update(overrides)
    return MDSettings.model_validate(values)


def _read_trace(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == TRACE_COLUMNS
        return list(reader)


def test_accuracy_equals_independent_computation(
    tiny_cu_model: Path, cu_test_frames: list[Atoms]
) -> None:
    frames = cu_test_frames[:2]
    got = evaluate_accuracy(tiny_cu_model, frames, AccuracySettings(batch_size=8))

    # mace's own calculator on the model file mace_run_train wrote, not on our package.
    mace_file = tiny_cu_model.parent / "mace" / "candidate.model"
    calc = MACECalculator(model_paths=str(mace_file), device="cpu", default_dtype="float64")
    e_err, n_atoms, f_err = [], [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        e_err.append(atoms.get_potential_energy() - atoms.info["REF_energy"])
        n_atoms.append(len(atoms))
        f_err.append((atoms.get_forces() - atoms.arrays["REF_forces"]).ravel())
    e = np.array(e_err) / np.array(n_atoms) * 1000
    f = np.concatenate(f_err) * 1000
    kcal = 1.6021766208e-19 * 6.022140857e23 / 4184.0  # kcal/mol per eV, CODATA 2014 as ASE
    e_mol, f_mol = np.array(e_err) * kcal, np.concatenate(f_err) * kcal
    want = {
        "energy_mae_meV_per_atom": np.mean(np.abs(e)),
        "energy_rmse_meV_per_atom": np.sqrt(np.mean(e**2)),
        "force_mae_meV_per_A": np.mean(np.abs(f)),
        "force_rmse_meV_per_A": np.sqrt(np.mean(f**2)),
        "energy_mae_kcal_per_mol": np.mean(np.abs(e_mol)),
        "energy_rmse_kcal_per_mol": np.sqrt(np.mean(e_mol**2)),
        "force_mae_kcal_per_mol_per_A": np.mean(np.abs(f_mol)),
        "force_rmse_kcal_per_mol_per_A": np.sqrt(np.mean(f_mol**2)),
    }
    assert all(math.isfinite(v) for v in got.values())
    assert got == pytest.approx(want, rel=1e-8)


def test_nan_model_is_inf_in_accuracy_and_non_finite_in_md(
    tiny_cu_model: Path, cu_test_frames: list[Atoms], tmp_path: Path
) -> None:
    nan_model = scaled_model(tiny_cu_model, math.nan, tmp_path / "nan.model")
    got = evaluate_accuracy(nan_model, cu_test_frames[:2], AccuracySettings())
    assert got == {k: math.inf for k in got} and len(got) == 8

    report = run_md_stability(nan_model, cu_test_frames[:1], _md_settings(), tmp_path / "md")
    (rep,) = report.replicas
    assert (rep.status, rep.survived_steps, rep.failure_ps) == ("non_finite", 0, 0.0)
    assert report.metrics["md_survival_fraction"] == 0.0
    assert [r["step"] for r in _read_trace(tmp_path / "md" / rep.trace_file)] == ["0"]


def test_trained_model_is_stable_at_300K(
    tiny_cu_model: Path, cu_test_frames: list[Atoms], tmp_path: Path
) -> None:
    settings = _md_settings()
    calls: list[tuple[int, int]] = []
    report = run_md_stability(
        tiny_cu_model, cu_test_frames[:1], settings, tmp_path, lambda d, t: calls.append((d, t))
    )

    (rep,) = report.replicas
    assert (rep.status, rep.survived_steps, rep.failure_ps) == ("stable", 50, None)
    assert rep.survived_ps == pytest.approx(0.1)
    assert rep.nve_drift_meV_per_atom_per_ps is not None
    assert report.metrics["md_survival_fraction"] == 1.0
    assert report.metrics["md_failed_replicas"] == 0.0
    assert report.metrics["md_min_distance_A"] == rep.min_distance_A > 1.5
    assert calls[-1] == (50, 50)

    rows = _read_trace(tmp_path / "replica-0-300K-s0.csv")
    assert rep.trace_file == "replica-0-300K-s0.csv"
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40, 50]
    assert [r["phase"] for r in rows] == ["init", "nvt", "nvt", "nvt", "nvt", "nve"]
    assert all(math.isfinite(float(r[c])) for r in rows for c in TRACE_COLUMNS[3:])


def test_model_that_collapses_is_flagged(
    tiny_cu_model: Path, cu_test_frames: list[Atoms], tmp_path: Path
) -> None:
    # Flipped and amplified: the learnt repulsion becomes a strong attraction.
    bad = scaled_model(tiny_cu_model, -50.0, tmp_path / "bad.model")
    # A huge runaway factor, so what is tested is the collapse itself.
    settings = _md_settings(max_temperature_factor=1e9)
    calls: list[tuple[int, int]] = []
    report = run_md_stability(
        bad, cu_test_frames[:1], settings, tmp_path / "md", lambda d, t: calls.append((d, t))
    )

    (rep,) = report.replicas
    assert rep.status in ("min_distance", "non_finite")
    assert rep.failure_ps is not None and rep.failure_ps < 0.1
    assert report.metrics["md_survival_fraction"] < 1.0
    assert report.metrics["md_failed_replicas"] == 1.0
    assert rep.nve_drift_meV_per_atom_per_ps is None
    assert calls[-1] == (50, 50)  # an early failure still completes the progress bar
    rows = _read_trace(tmp_path / "md" / rep.trace_file)
    assert float(rows[-1]["time_ps"]) == pytest.approx(rep.failure_ps)
    assert int(rows[-1]["step"]) == rep.survived_steps + 1

    # With the collapse test out of the way, the same model is caught as a temperature runaway,
    # once the 10-step averaging window is full.
    settings = _md_settings(min_distance_A=0.01, max_temperature_factor=2.0)
    (hot,) = run_md_stability(bad, cu_test_frames[:1], settings, tmp_path / "md2").replicas
    assert (hot.status, hot.survived_steps) == ("temperature_runaway", 8)


def test_tiny_drift_threshold_flags_energy_drift(
    tiny_cu_model: Path, cu_test_frames: list[Atoms], tmp_path: Path
) -> None:
    settings = _md_settings(
        nvt_steps=5, nve_steps=10, max_energy_drift_meV_per_atom_per_ps=1e-9, trace_every=5
    )
    report = run_md_stability(tiny_cu_model, cu_test_frames[:1], settings, tmp_path)

    (rep,) = report.replicas
    assert rep.status == "energy_drift"
    assert rep.nve_drift_meV_per_atom_per_ps is not None
    assert rep.nve_drift_meV_per_atom_per_ps > 1e-9
    assert rep.survived_steps == 5
    assert rep.failure_ps == pytest.approx(0.03)
    assert report.metrics["md_survival_fraction"] == pytest.approx(5 / 15)
    assert report.metrics["md_max_energy_drift_meV_per_atom_per_ps"] == pytest.approx(
        rep.nve_drift_meV_per_atom_per_ps
    )


def test_throughput_of_model_against_itself(
    tiny_cu_model: Path, cu_test_frames: list[Atoms]
) -> None:
    got = measure_throughput(
        tiny_cu_model, tiny_cu_model, cu_test_frames[0], ThroughputSettings(md_steps=20, repeats=3)
    )
    assert got["md_atom_steps_per_s"] > 0 and got["baseline_atom_steps_per_s"] > 0
    assert 0.5 <= got["relative_throughput"] <= 2.0
    assert got["relative_throughput"] == pytest.approx(
        got["md_atom_steps_per_s"] / got["baseline_atom_steps_per_s"]
    )
