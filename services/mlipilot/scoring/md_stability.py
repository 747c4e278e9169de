"""MD stability stage: does the candidate keep real atoms together at temperature?

Each replica (start frame x temperature x seed) runs Langevin NVT, then VelocityVerlet NVE, and
stops at the first failure. Every candidate of a campaign runs this, so the step loop avoids work
the verdict does not need (stress, repeated force calls, a second neighbour search).

Two engines move the atoms (``md.engine`` in the spec): this module's ASE loop, one calculator
call per replica and step, kept as the reference; and the batched engine (md_batched.py), all
replicas in one model call per step. Both hand each step's state to the same ReplicaMonitor,
which applies the failure tests and writes the traces and outcomes.
"""

from __future__ import annotations

import csv
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from mace.calculators import MACECalculator
from pydantic import BaseModel

from mlipilot.errors import MlipilotError
from mlipilot.process_globals import GLOBALS_LOCK
from mlipilot.scoring.md_molecular import MolecularCheck
from mlipilot.scoring.model_file import load_model
from mlipilot.scoring.spec import MDSettings, Precision

try:  # ASE >= 3.29 deprecates MaxwellBoltzmannDistribution in favour of thermalize_momenta
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # pragma: no cover - older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as _mb

    def thermalize_momenta(atoms: Atoms, temperature_K: float, *, rng: np.random.Generator):
        _mb(atoms, temperature_K=temperature_K, rng=rng)


Status = Literal[
    "stable",
    "non_finite",
    "min_distance",
    "fragmentation",
    "bond_deviation",
    "temperature_runaway",
    "energy_drift",
]
TRACE_COLUMNS = (
    "step",
    "time_ps",
    "phase",
    "temperature_K",
    "potential_eV",
    "total_eV",
    "min_distance_A",
)
RUNAWAY_WINDOW = 10  # steps averaged before calling a temperature a runaway


class ForcesOnlyMACE(MACECalculator):
    """MACE energy and forces without stress, plus the closest pair distance.

    MACECalculator always computes the stress, which fixed-cell MD never reads (skipping it saves
    only 0-5 % per step with mace-torch 0.3.16, measured at 32 and 256 atoms). The closest pair is
    read off the graph MACE builds anyway, so the collapse check needs no second neighbour search.
    """

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        with GLOBALS_LOCK:  # graph building and forward: see process_globals
            self._calculate(atoms, properties, system_changes)

    def _calculate(self, atoms, properties, system_changes) -> None:
        Calculator.calculate(self, atoms, properties, system_changes)
        n = len(self.atoms)
        batch = self._atoms_to_batch(self.atoms)
        out = self.models[0](batch.to_dict(), compute_stress=False, training=False)
        energy = float(out["energy"][0].detach()) * self.energy_units_to_eV
        forces = out["forces"][:n].detach().cpu().numpy() * self.energy_units_to_eV
        # Edges of padding graphs (if MACE_ASE_PAD_* is set) start at index >= n: drop them.
        with torch.no_grad():
            edge_index, shifts = batch["edge_index"], batch["shifts"]
            real = edge_index[0] < n
            pos = batch["positions"]
            vec = pos[edge_index[1, real]] - pos[edge_index[0, real]] + shifts[real]
            # No pair inside r_max: the closest one is at least r_max away.
            closest = float(torch.linalg.norm(vec, dim=1).min()) if vec.shape[0] else self.r_max
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": forces / self.length_units_to_A,
            "min_distance": closest * self.length_units_to_A,
        }


def load_md_calculator(
    model_path: Path, device: str = "cpu", dtype: Precision = "float64"
) -> ForcesOnlyMACE:
    """Load a model package as a stress-free MD calculator evaluated in ``dtype``."""
    # Loaded here rather than via model_paths= so a path with glob characters still works.
    model = load_model(model_path)
    with GLOBALS_LOCK:  # MACECalculator sets torch's (process-wide) default dtype: put it back
        before = torch.get_default_dtype()
        try:
            return ForcesOnlyMACE(models=model, device=device, default_dtype=dtype)
        finally:
            torch.set_default_dtype(before)


class ReplicaOutcome(BaseModel):
    """One replica's verdict. A failure at step k survived k-1 steps and failed at k x timestep;
    an energy_drift failure survived the NVT steps only and is dated at the end of NVE."""

    start_frame: int
    temperature_K: float
    seed: int
    status: Status
    survived_steps: int
    survived_ps: float
    failure_ps: float | None = None
    max_temperature_K: float
    min_distance_A: float
    nve_drift_meV_per_atom_per_ps: float | None = None
    max_bond_deviation_A: float | None = None  # with md.molecular only
    trace_file: str


class MDReport(BaseModel):
    replicas: list[ReplicaOutcome]
    metrics: dict[str, float]


def _finite_state(atoms: Atoms, results: dict) -> bool:
    return bool(
        np.isfinite(atoms.positions).all()
        and np.isfinite(atoms.get_momenta()).all()
        and np.isfinite(results.get("forces", np.nan)).all()
        and math.isfinite(results.get("energy", math.nan))
    )


class ReplicaMonitor:
    """The failure tests, trace rows and outcome of one replica, whichever engine moves it.

    The engine calls ``observe`` once per step (step 0 is the start) with that step's state;
    the monitor decides whether the replica has failed, writes every ``trace_every``-th row and
    the last one, and counts the steps done for the progress bar.
    """

    def __init__(self, job: ReplicaJob, settings: MDSettings, n_atoms: int, trace: TextIO) -> None:
        self.job, self.settings, self.n_atoms = job, settings, n_atoms
        self.status: Status = "stable"
        self.done = False
        self.step = 0
        self._reported = 0
        self._temps: deque[float] = deque(maxlen=RUNAWAY_WINDOW)
        self.max_temp, self.min_dist = -math.inf, math.inf
        self._nve_energy: list[tuple[float, float]] = []
        self.molecular = (
            MolecularCheck.of(job.frame, settings.molecular, f"MD start frame {job.frame_idx}")
            if settings.molecular is not None
            else None
        )
        self.max_bond_dev = 0.0
        self._writer = csv.writer(trace)
        self._writer.writerow(TRACE_COLUMNS)

    def observe(
        self,
        step: int,
        *,
        temperature_K: float,
        potential_eV: float,
        kinetic_eV: float,
        min_distance_A: float,
        finite: bool,
        positions: np.ndarray,
    ) -> int:
        """Test the state after ``step``; return the integration steps it completes."""
        s = self.settings
        n_nvt, total = s.nvt_steps, s.nvt_steps + s.nve_steps
        dt_ps = s.timestep_fs / 1000.0
        self.step = step
        t_now, dist = temperature_K, min_distance_A
        self._temps.append(t_now)
        self.max_temp = max(self.max_temp, t_now) if not math.isnan(t_now) else self.max_temp
        if not math.isnan(dist):
            self.min_dist = min(self.min_dist, dist)
        if not finite:
            self.status = "non_finite"
        elif dist < s.min_distance_A:
            self.status = "min_distance"
        elif self.molecular is not None and (broken := self._molecular_failure(positions)):
            self.status = broken
        elif (
            len(self._temps) == RUNAWAY_WINDOW  # a full window: one hot early step is no runaway
            and sum(self._temps) / RUNAWAY_WINDOW
            > s.max_temperature_factor * self.job.temperature_K
        ):
            self.status = "temperature_runaway"
        e_total = potential_eV + kinetic_eV
        if step >= n_nvt and self.status == "stable":
            self._nve_energy.append((step * dt_ps, e_total / self.n_atoms))
        self.done = self.status != "stable" or step == total
        if not (self.done or step % s.trace_every == 0):
            return 0
        phase = "init" if step == 0 else ("nvt" if step <= n_nvt else "nve")
        row = (step, step * dt_ps, phase, t_now, potential_eV, e_total, dist)
        self._writer.writerow([f"{v:.10g}" if isinstance(v, float) else v for v in row])
        # At the end, an early failure forfeits the rest: count it as done.
        upto = total if self.done else step
        steps, self._reported = upto - self._reported, upto
        return steps

    def _molecular_failure(self, positions: np.ndarray) -> Status | None:
        check = self.molecular
        assert check is not None
        deviation = check.max_deviation_A(positions)
        self.max_bond_dev = max(self.max_bond_dev, deviation)
        if check.fragmented(positions):
            return "fragmentation"
        if deviation > check.settings.max_bond_deviation_A:
            return "bond_deviation"
        return None

    def outcome(self) -> ReplicaOutcome:
        s = self.settings
        n_nvt, total = s.nvt_steps, s.nvt_steps + s.nve_steps
        dt_ps = s.timestep_fs / 1000.0
        status = self.status
        drift = None
        if status == "stable" and len(self._nve_energy) >= 2:
            t, e = np.array(self._nve_energy).T
            drift = abs(float(np.polyfit(t, e, 1)[0])) * 1000.0  # eV/atom/ps -> meV/atom/ps
            if not drift <= s.max_energy_drift_meV_per_atom_per_ps:
                status = "energy_drift"
        if status == "stable":
            survived, failure_ps = total, None
        elif status == "energy_drift":
            survived, failure_ps = n_nvt, total * dt_ps  # the NVE segment is lost, found at its end
        else:
            survived, failure_ps = max(self.step - 1, 0), self.step * dt_ps
        return ReplicaOutcome(
            start_frame=self.job.frame_idx,
            temperature_K=self.job.temperature_K,
            seed=self.job.seed,
            status=status,
            survived_steps=survived,
            survived_ps=survived * dt_ps,
            failure_ps=failure_ps,
            max_temperature_K=self.max_temp,
            min_distance_A=self.min_dist,
            nve_drift_meV_per_atom_per_ps=drift,
            max_bond_deviation_A=self.max_bond_dev if self.molecular is not None else None,
            trace_file=self.job.trace_path.name,
        )


def thermalized(frame: Atoms, temperature_K: float, seed: int) -> tuple[Atoms, np.random.Generator]:
    """A copy of ``frame`` with Maxwell-Boltzmann momenta from ``seed`` and no centre-of-mass
    drift, and the generator that drew them."""
    atoms = frame.copy()
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K, rng=rng)
    Stationary(atoms)
    return atoms, rng


def initial_state(job: ReplicaJob) -> tuple[Atoms, np.random.Generator]:
    """The replica's start. The generator returned goes on to draw the Langevin noise, so both
    engines see one stream."""
    return thermalized(job.frame, job.temperature_K, job.seed)


def _run_replica(
    calc: ForcesOnlyMACE, job: ReplicaJob, settings: MDSettings, on_steps: Callable[[int], None]
) -> ReplicaOutcome:
    atoms, rng = initial_state(job)
    atoms.calc = calc
    calc.reset()
    dt = settings.timestep_fs * units.fs
    # fixcm=False: ASE deprecates fixcm=True; Stationary() already zeroed the COM drift.
    nvt = Langevin(
        atoms,
        dt,
        temperature_K=job.temperature_K,
        friction=settings.friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    nve = VelocityVerlet(atoms, dt)
    step, forces = 0, None
    with job.trace_path.open("w", newline="") as fh:
        monitor = ReplicaMonitor(job, settings, len(atoms), fh)
        while True:
            try:
                if step == 0:
                    forces = atoms.get_forces()
                else:
                    # Each step ends with forces at the new positions: hand them on, not recompute.
                    forces = (nvt if step <= settings.nvt_steps else nve).step(forces)
            except Exception:
                if _finite_state(atoms, calc.results):
                    raise
                calc.results = {}  # a crash on a blown-up state is that state's verdict
            res = calc.results
            on_steps(
                monitor.observe(
                    step,
                    temperature_K=atoms.get_temperature(),
                    potential_eV=res.get("energy", math.nan),
                    kinetic_eV=atoms.get_kinetic_energy(),
                    min_distance_A=res.get("min_distance", math.nan),
                    finite=_finite_state(atoms, res),
                    positions=atoms.positions,
                )
            )
            if monitor.done:
                return monitor.outcome()
            step += 1


@dataclass(frozen=True)
class ReplicaJob:
    """One MD replica: a start frame at one temperature with one seed, traced to a file."""

    frame_idx: int
    frame: Atoms
    temperature_K: float
    seed: int
    trace_path: Path


# Runs replicas of one model and returns their outcomes in order: here one after another, or
# as parallel Ray tasks (scoring/ray_md.py). ``on_steps`` counts integration steps done.
ReplicaRunner = Callable[
    [Path, list[ReplicaJob], MDSettings, Callable[[int], None]], list[ReplicaOutcome]
]


def _run_ase(
    model_path: Path,
    jobs: list[ReplicaJob],
    settings: MDSettings,
    on_steps: Callable[[int], None],
    device: str,
) -> list[ReplicaOutcome]:
    calc = load_md_calculator(model_path, device=device, dtype=settings.precision)
    return [run_replica(calc, job, settings, on_steps) for job in jobs]


def _run_batched(
    model_path: Path,
    jobs: list[ReplicaJob],
    settings: MDSettings,
    on_steps: Callable[[int], None],
    device: str,
) -> list[ReplicaOutcome]:
    from mlipilot.scoring.md_batched import run_replicas_batched  # TorchSim: loaded when used

    return run_replicas_batched(model_path, jobs, settings, on_steps, device=device)


@dataclass(frozen=True)
class MDEngine:
    """How one ``md.engine`` runs a group of replicas of one model on one device."""

    run: Callable[
        [Path, list[ReplicaJob], MDSettings, Callable[[int], None], str], list[ReplicaOutcome]
    ]
    batches: bool  # moves many replicas per model call: give it groups, not one replica each


# The one place an engine name means code: local runs and Ray tasks (scoring/ray_md.py) alike.
MD_ENGINES: dict[str, MDEngine] = {
    "ase": MDEngine(_run_ase, batches=False),
    "batched": MDEngine(_run_batched, batches=True),
}


def run_replicas_here(
    model_path: Path, jobs: list[ReplicaJob], settings: MDSettings, on_steps: Callable[[int], None]
) -> list[ReplicaOutcome]:
    """Run the replicas in this process with the spec's engine (``md.engine``)."""
    return MD_ENGINES[settings.engine].run(model_path, jobs, settings, on_steps, "cpu")


def run_replica(
    calc: ForcesOnlyMACE, job: ReplicaJob, settings: MDSettings, on_steps: Callable[[int], None]
) -> ReplicaOutcome:
    """One replica on the ASE reference loop (Langevin, then VelocityVerlet)."""
    return _run_replica(calc, job, settings, on_steps)


def run_md_stability(
    model_path: Path,
    start_frames: list[Atoms],
    settings: MDSettings,
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    runner: ReplicaRunner = run_replicas_here,
) -> MDReport:
    """Run every start frame x temperature x seed replica; write one trace CSV per replica."""
    if not start_frames:
        raise MlipilotError("MD stability: no start frames given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_replica = settings.nvt_steps + settings.nve_steps
    n_total = len(start_frames) * len(settings.temperatures_K) * len(settings.seeds) * per_replica
    done = 0

    def on_steps(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None and n:
            progress(done, n_total)

    jobs = [
        ReplicaJob(
            frame_idx,
            frame,
            float(temp),
            seed,
            out_dir / f"replica-{frame_idx}-{temp:g}K-s{seed}.csv",
        )
        for frame_idx, frame in enumerate(start_frames)
        for temp in settings.temperatures_K
        for seed in settings.seeds
    ]
    outcomes = runner(model_path, jobs, settings, on_steps)
    return MDReport(replicas=outcomes, metrics=_metrics(outcomes, settings))


def _metrics(outcomes: list[ReplicaOutcome], settings: MDSettings) -> dict[str, float]:
    per_replica = settings.nvt_steps + settings.nve_steps
    drifts = [o.nve_drift_meV_per_atom_per_ps for o in outcomes]
    molecular = {}
    if settings.molecular is not None:
        molecular["md_max_bond_deviation_A"] = max(o.max_bond_deviation_A or 0.0 for o in outcomes)
    return {
        "md_survival_fraction": float(np.mean([o.survived_steps / per_replica for o in outcomes])),
        "md_failed_replicas": float(sum(o.status != "stable" for o in outcomes)),
        "md_min_distance_A": min(o.min_distance_A for o in outcomes),
        "md_max_energy_drift_meV_per_atom_per_ps": max(
            (d for d in drifts if d is not None), default=0.0
        ),
        **molecular,
    }
