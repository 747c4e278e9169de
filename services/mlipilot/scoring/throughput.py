"""Throughput stage: MD speed of the candidate relative to the baseline, timed side by side.

Absolute speed on a shared machine swings by 2x with whatever else runs; timing candidate and
baseline alternately and comparing medians lets that noise hit both alike.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from ase import Atoms
from ase.calculators.calculator import all_changes

from mlipilot.scoring.md_stability import ForcesOnlyMACE, load_md_calculator
from mlipilot.scoring.spec import ThroughputSettings

WARMUP_STEPS = 3  # first calls pay for lazy allocations and caches, not the model


def _atom_steps_per_s(calc: ForcesOnlyMACE, structure: Atoms, n_steps: int) -> float:
    """Time n_steps of what an MD step costs the model: the graph, energy and forces.

    Every call is at the same structure. Integrating instead would let the model's own
    dynamics decide what is timed: a model that blows the structure apart leaves atoms
    scattered over a huge box, and the neighbour search, not the model, sets its speed.
    """
    atoms = structure.copy()

    def step() -> None:
        calc.calculate(atoms, ["energy", "forces"], all_changes)

    for _ in range(WARMUP_STEPS):
        step()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    elapsed = time.perf_counter() - start
    return len(atoms) * n_steps / elapsed


def measure_throughput(
    model_path: Path,
    baseline_model_path: Path,
    structure: Atoms,
    settings: ThroughputSettings,
) -> dict[str, float]:
    """Median atom-steps/s of candidate and baseline over interleaved repeats, and their ratio."""
    # Two calculators even for the same file: the baseline must pay the same costs as the candidate.
    candidate = load_md_calculator(model_path)
    baseline = load_md_calculator(baseline_model_path)
    cand_rates, base_rates = [], []
    for _ in range(settings.repeats):
        cand_rates.append(_atom_steps_per_s(candidate, structure, settings.md_steps))
        base_rates.append(_atom_steps_per_s(baseline, structure, settings.md_steps))
    cand, base = statistics.median(cand_rates), statistics.median(base_rates)
    return {
        "md_atom_steps_per_s": cand,
        "baseline_atom_steps_per_s": base,
        "relative_throughput": cand / base,
    }
