"""Throughput stage: MD speed of the candidate relative to the baseline, timed side by side.

Absolute speed on a shared machine swings by 2x with whatever else runs; timing candidate and
baseline alternately and comparing medians lets that noise hit both alike.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from ase import Atoms, units
from ase.md.verlet import VelocityVerlet

from mlipilot.process_globals import GLOBALS_LOCK
from mlipilot.scoring.md_stability import ForcesOnlyMACE, load_md_calculator, thermalized
from mlipilot.scoring.spec import ThroughputSettings

WARMUP_STEPS = 3  # first calls pay for lazy allocations and caches, not the model
TIMESTEP_FS = 1.0
TEMPERATURE_K = 300.0
SEED = 0


def _atom_steps_per_s(calc: ForcesOnlyMACE, structure: Atoms, n_steps: int) -> float:
    """Time n_steps of VelocityVerlet, the same loop (and calculator) as the stability stage.

    Every step starts from the same state (positions and momenta put back): the model's own
    dynamics must not decide what is timed. A model that blows the structure apart would
    leave its atoms scattered over a huge box, and the neighbour search, not the model, would
    set its speed (an exploding baseline once measured 0.04x against itself).
    """
    # Same velocities every timing, so both models step from the same state.
    atoms, _ = thermalized(structure, TEMPERATURE_K, SEED)
    atoms.calc = calc
    calc.reset()
    dyn = VelocityVerlet(atoms, TIMESTEP_FS * units.fs)
    start_positions, start_momenta = atoms.get_positions(), atoms.get_momenta()
    start_forces = atoms.get_forces()

    def step() -> None:
        atoms.set_positions(start_positions)
        atoms.set_momenta(start_momenta)
        calc.reset()  # the step reaches the same positions each time: no cached answer
        dyn.step(start_forces)

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
    # Held throughout: no other scoring thread's model work runs into the timings.
    with GLOBALS_LOCK:
        for _ in range(settings.repeats):
            cand_rates.append(_atom_steps_per_s(candidate, structure, settings.md_steps))
            base_rates.append(_atom_steps_per_s(baseline, structure, settings.md_steps))
    cand, base = statistics.median(cand_rates), statistics.median(base_rates)
    return {
        "md_atom_steps_per_s": cand,
        "baseline_atom_steps_per_s": base,
        "relative_throughput": cand / base,
    }
