"""Tiny real campaigns for integration tests: one scorecard, one bad baseline, one writer.

Short MD and loose thresholds so a test campaign scores in seconds; the baseline is untuned
so it starts infeasible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# The smallest job for the code-mode training program (its job keys): trains in seconds.
TINY_PROGRAM_JOB: dict[str, Any] = {
    "epochs": 2,
    "num_channels": 8,
    "correlation": 2,
    "num_interactions": 1,
    "r_max": 3.5,
    "num_radial_basis": 4,
    "batch_size": 2,
}


def tiny_spec(md_seeds: tuple[int, ...] = (0, 1)) -> dict[str, Any]:
    return {
        "name": "cu-emt-tiny",
        "version": 1,
        "md": {
            "start_frames": [0],
            "temperatures_K": [600],
            "seeds": list(md_seeds),
            "nvt_steps": 30,
            "nve_steps": 10,
            "timestep_fs": 2.0,
            "friction_per_fs": 0.01,
            "min_distance_A": 1.8,
            "max_temperature_factor": 2.5,
            "max_energy_drift_meV_per_atom_per_ps": 200.0,
            "trace_every": 5,
        },
        "throughput": {"md_steps": 5, "repeats": 1},
        "constraints": [
            {"metric": "energy_mae_meV_per_atom", "max": 40.0, "unit": "meV/atom"},
            {"metric": "force_mae_meV_per_A", "max": 150.0, "unit": "meV/Å"},
            {"metric": "md_survival_fraction", "min": 1.0, "unit": "fraction"},
            {"metric": "relative_throughput", "min": 0.05, "unit": "x baseline"},
        ],
        "composite_weights": {"energy_mae_meV_per_atom": 1.0, "force_mae_meV_per_A": 1.0},
    }


TINY_SPEC = tiny_spec()

BAD_BASELINE = {
    "e0s": "zero",
    "scaling": "no_scaling",
    "energy_weight": 1.0,
    "forces_weight": 1.0,
    "lr": 0.001,
    "num_channels": 8,
    "num_interactions": 1,
    "correlation": 2,
    "r_max": 4.0,
    "batch_size": 4,
}


def write_tiny_campaign(
    folder: Path,
    *,
    name: str,
    data_path: str | Path = "data",
    agent: str = "rule-based",
    n_train: int = 16,
    spec: dict[str, Any] = TINY_SPEC,
    **budget: object,
) -> Path:
    """Write ``folder/spec.yaml`` and ``folder/<name>.yaml``; return the campaign file."""
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    campaign = {
        "name": name,
        "data": {
            "kind": "cu-emt",
            "path": str(data_path),
            "seed": 0,
            "n_train": n_train,
            "n_test": 8,
        },
        "scorecard": "spec.yaml",
        "baseline": BAD_BASELINE,
        "agent": {"kind": agent},
        "budget": {"iterations": 2, "epochs": 3, "max_train_seconds": 300, **budget},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(campaign))
    return path
