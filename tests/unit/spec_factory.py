"""Small scorecard specs for unit tests: the constraints vary, the MD block never matters."""

from __future__ import annotations

from typing import Any

from mlipilot.scoring.spec import ScorecardSpec

MINIMAL_MD = {
    "start_frames": [0],
    "temperatures_K": [300.0],
    "seeds": [0],
    "nvt_steps": 10,
    "nve_steps": 0,
    "timestep_fs": 2.0,
    "friction_per_fs": 0.01,
    "min_distance_A": 1.5,
    "max_temperature_factor": 3.0,
    "max_energy_drift_meV_per_atom_per_ps": 5.0,
}


def make_spec(
    name: str, constraints: list[dict[str, Any]], weights: dict[str, float]
) -> ScorecardSpec:
    return ScorecardSpec.model_validate(
        {
            "name": name,
            "version": 1,
            "md": MINIMAL_MD,
            "throughput": {"md_steps": 5},
            "constraints": constraints,
            "composite_weights": weights,
        }
    )
