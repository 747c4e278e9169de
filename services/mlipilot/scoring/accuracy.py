"""Accuracy stage: energy and force errors of a trained model on the held-out test split.

Frames are evaluated in batches through MACE's own graph pipeline (the one training uses), so the
numbers match what mace_run_train would report on the same frames.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from mace import data as mace_data
from mace.tools import torch_geometric, torch_tools, utils

from mlipilot.data.extxyz import ENERGY_KEY, FORCES_KEY
from mlipilot.errors import MlipilotError
from mlipilot.process_globals import GLOBALS_LOCK
from mlipilot.scoring.model_file import load_model
from mlipilot.scoring.spec import AccuracySettings

KCAL_PER_MOL_PER_EV = 1.0 / (units.kcal / units.mol)  # 23.06


def _references(frames: list[Atoms]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference energies, atom counts and stacked forces; a missing label is a user error."""
    energies, counts, forces = [], [], []
    for i, atoms in enumerate(frames):
        if ENERGY_KEY not in atoms.info or FORCES_KEY not in atoms.arrays:
            raise MlipilotError(
                f"accuracy: test frame {i} lacks info[{ENERGY_KEY!r}] or arrays[{FORCES_KEY!r}]"
            )
        energies.append(float(atoms.info[ENERGY_KEY]))
        counts.append(len(atoms))
        forces.append(np.asarray(atoms.arrays[FORCES_KEY], dtype=float))
    return np.array(energies), np.array(counts), np.concatenate(forces)


def _predict(
    model: torch.nn.Module, frames: list[Atoms], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted energies (per frame) and forces (stacked), in frame order."""
    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    unknown = sorted({int(z) for a in frames for z in a.numbers} - set(z_table.zs))
    if unknown:
        raise MlipilotError(f"accuracy: test frames hold elements the model lacks: Z={unknown}")
    heads = getattr(model, "heads", ["Default"])
    with torch_tools.default_dtype("float64"):
        graphs = [
            mace_data.AtomicData.from_config(
                mace_data.config_from_atoms(a, head_name=heads[0]),
                z_table=z_table,
                cutoff=float(model.r_max),
                heads=heads,
            )
            for a in frames
        ]
    loader = torch_geometric.dataloader.DataLoader(
        dataset=graphs, batch_size=batch_size, shuffle=False, drop_last=False
    )
    energies, forces = [], []
    for batch in loader:
        out = model(batch.to_dict(), compute_stress=False, training=False)
        energies.append(out["energy"].detach().numpy())
        forces.append(out["forces"].detach().numpy())
    return np.concatenate(energies), np.concatenate(forces)


def predict_file(
    model_path: Path, frames: list[Atoms], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``_predict`` with the model package at ``model_path``, in float64, no parameter grads."""
    with GLOBALS_LOCK:  # the default dtype, and e3nn's tracing: see process_globals
        model = load_model(model_path).double()
        for param in model.parameters():
            param.requires_grad = False
        return _predict(model, frames, batch_size)


def _mae_rmse(errors: np.ndarray) -> tuple[float, float]:
    if errors.size == 0 or not np.isfinite(errors).all():
        return math.inf, math.inf  # a model that predicts NaN is as wrong as it gets
    return float(np.mean(np.abs(errors))), float(np.sqrt(np.mean(errors**2)))


def evaluate_accuracy(
    model_path: Path, test_frames: list[Atoms], settings: AccuracySettings
) -> dict[str, float]:
    """MAE and RMSE on the test frames: energy per atom (meV/atom) and force component (meV/Å)
    as materials scientists quote them, and energy per frame (kcal/mol) and force component
    (kcal/mol/Å) as chemists do for molecules; a scorecard constrains the ones it needs."""
    if not test_frames:
        raise MlipilotError("accuracy: the test split is empty")
    ref_e, counts, ref_f = _references(test_frames)
    pred_e, pred_f = predict_file(model_path, test_frames, settings.batch_size)
    e_mae, e_rmse = _mae_rmse((pred_e - ref_e) / counts * 1000.0)
    f_mae, f_rmse = _mae_rmse((pred_f - ref_f).ravel() * 1000.0)
    mol_mae, mol_rmse = _mae_rmse((pred_e - ref_e) * KCAL_PER_MOL_PER_EV)
    kf_mae, kf_rmse = _mae_rmse((pred_f - ref_f).ravel() * KCAL_PER_MOL_PER_EV)
    return {
        "energy_mae_meV_per_atom": e_mae,
        "energy_rmse_meV_per_atom": e_rmse,
        "force_mae_meV_per_A": f_mae,
        "force_rmse_meV_per_A": f_rmse,
        "energy_mae_kcal_per_mol": mol_mae,
        "energy_rmse_kcal_per_mol": mol_rmse,
        "force_mae_kcal_per_mol_per_A": kf_mae,
        "force_rmse_kcal_per_mol_per_A": kf_rmse,
    }
