"""The two task functions the fan-out runs: picklable, and returning failures as values."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from mlipilot.data.molecules.levels import BACKEND_ERROR, LabelError, Level
from mlipilot.data.molecules.molecule_list import Molecule
from mlipilot.data.molecules.sampling import SamplingError, SamplingSettings, sample_configurations


@dataclass(frozen=True)
class SampleJob:
    molecule: Molecule
    seed: int
    settings: SamplingSettings


@dataclass(frozen=True)
class SampleOutcome:
    frames: list[Atoms] | None
    error: str | None = None


@dataclass(frozen=True)
class LabelJob:
    level: Level
    config: Atoms


@dataclass(frozen=True)
class LabelOutcome:
    energy: float | None
    forces: np.ndarray | None
    seconds: float
    failure_kind: str | None = None
    failure_reason: str | None = None


def sample_task(job: SampleJob) -> SampleOutcome:
    try:
        return SampleOutcome(sample_configurations(job.molecule, job.seed, job.settings))
    except SamplingError as exc:
        return SampleOutcome(None, str(exc))


def label_task(job: LabelJob) -> LabelOutcome:
    start = time.perf_counter()
    try:
        energy, forces = job.level.label(job.config.numbers, job.config.positions)
    except LabelError as exc:
        return LabelOutcome(None, None, time.perf_counter() - start, exc.kind, exc.reason)
    except (ArithmeticError, ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
        # A backend failing on one geometry must not cost a day-long job: record and go on.
        reason = f"{type(exc).__name__}: {exc}"
        return LabelOutcome(None, None, time.perf_counter() - start, BACKEND_ERROR, reason)
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        return LabelOutcome(
            None, None, time.perf_counter() - start, BACKEND_ERROR, "non-finite energy or forces"
        )
    return LabelOutcome(energy, forces, time.perf_counter() - start)
