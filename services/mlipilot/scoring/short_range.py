"""Short-range repulsion probe: two atoms pushed together, the energy must rise all the way.

A cheap in-loop proxy (scorecard v2) for the validation suite's pushed-atom and heating-ramp
checks. Training data of thermal MD and small strains barely samples distances below the
nearest-neighbour shell, and a model is free to put a spurious well there: hot MD then falls
into it and collapses (the failure the Cu suite's ramp finds at ~2300 K in models the v1
scorecard accepts). The probe needs no reference labels, only the physics that any pair of
atoms repels more the closer it is pushed below its bonding distance.

In a test-split frame, one atom is moved along the line to its nearest neighbour, from
``from_A`` down to ``to_A``, every other atom fixed; all geometries go through the model in one
batch (the accuracy stage's graph pipeline). The metric is the share of steps over which the
energy rises: 1 for a repulsive wall, less for every step it falls (a barrier over a hole).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms

from mlipilot.errors import MlipilotError
from mlipilot.scoring.accuracy import predict_file
from mlipilot.scoring.spec import SHORT_RANGE_METRIC as METRIC
from mlipilot.scoring.spec import ShortRangeSettings


def pushed_pair_path(frame: Atoms, settings: ShortRangeSettings) -> tuple[np.ndarray, list[Atoms]]:
    """Distances (from ``from_A`` down) and the frames with ``settings.atom`` moved there."""
    i = settings.atom
    if not 0 <= i < len(frame):
        raise MlipilotError(
            f"short_range: atom {i} out of range for a start frame of {len(frame)} atoms"
        )
    vectors = frame.get_distances(i, range(len(frame)), mic=True, vector=True)
    lengths = np.linalg.norm(vectors, axis=1)
    lengths[i] = np.inf
    j = int(np.argmin(lengths))
    # Unit vector from the neighbour to the atom: the atom sits at neighbour + d u.
    u = -vectors[j] / lengths[j]
    anchor = frame.positions[i] + vectors[j]  # the neighbour's image nearest the atom
    dists = np.arange(settings.from_A, settings.to_A - 1e-9, -settings.step_A)
    frames = []
    for d in dists:
        moved = frame.copy()
        moved.positions[i] = anchor + d * u
        frames.append(moved)
    return dists, frames


def rise_fraction(energies: np.ndarray) -> float:
    """Share of steps (inward) over which the energy rises; 0 when any energy is not finite."""
    if not np.isfinite(energies).all():
        return 0.0
    return float(np.mean(np.diff(energies) > 0.0))


def probe_short_range(
    model_path: Path, frame: Atoms, settings: ShortRangeSettings, batch_size: int = 16
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The metric, and the curve (distances, energies) for the result's details."""
    dists, frames = pushed_pair_path(frame, settings)
    energies, _ = predict_file(model_path, frames, batch_size)
    return {METRIC: rise_fraction(energies)}, {
        "distance_A": [float(d) for d in dists],
        "energy_eV": [float(e) for e in energies],
    }
