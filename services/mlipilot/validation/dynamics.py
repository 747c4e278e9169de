"""Molecular dynamics beyond the scorecard's: a heating ramp far past its temperatures, and
NVE on a larger cell for many more steps.

Both start from the perfect crystal at the suite's lattice constant (the data's), so the model
and the reference run the same box from the same seeded velocities and noise, and apply the
scorecard's failure tests (scoring/md_stability.py) after every step: a non-finite energy,
force or position; two atoms closer than a floor; and, under the thermostat, a temperature
runaway. A calculator that raises counts as a failure too, named in the notes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet

from mlipilot.validation.crystal import conventional
from mlipilot.validation.result import CalculatorFactory, Curve, Measured
from mlipilot.validation.suite import NVE, HeatingRamp

try:  # ASE >= 3.29 deprecates MaxwellBoltzmannDistribution in favour of thermalize_momenta
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # pragma: no cover - older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as _mb

    def thermalize_momenta(atoms: Atoms, temperature_K: float, *, rng: np.random.Generator):
        _mb(atoms, temperature_K=temperature_K, rng=rng)


RUNAWAY_WINDOW = 10  # steps averaged before calling a temperature a runaway, as the scorecard


def closest_distance(atoms: Atoms) -> float:
    """The closest pair under the minimum-image convention: exact in these cubic cells for
    any pair closer than half the box (3.6 Å in the 32-atom cell)."""
    frac = atoms.get_scaled_positions(wrap=False)
    diff = frac[:, None, :] - frac[None, :, :]
    diff -= np.round(diff)
    dist = np.linalg.norm(diff @ atoms.cell.array, axis=-1)
    np.fill_diagonal(dist, np.inf)
    return float(dist.min())


def bragg_order(atoms: Atoms, supercell: int) -> float:
    """|S(k)|² / N² averaged over the three {200} reciprocal vectors of the starting lattice:
    1 for the perfect crystal, below 1 by the Debye-Waller factor when hot, ~1/N when molten."""
    a = atoms.cell.lengths()[0] / supercell
    k = 2 * np.pi / a * 2 * np.eye(3)
    phases = np.exp(1j * atoms.positions @ k.T)
    return float(np.mean(np.abs(phases.sum(axis=0)) ** 2) / len(atoms) ** 2)


@dataclass
class _Trajectory:
    """Per-step records and the first failure, if any."""

    rows: list[tuple[float, ...]] = field(default_factory=list)
    failure: str | None = None
    failed_step: int | None = None

    def column(self, i: int) -> np.ndarray:
        return np.array([r[i] for r in self.rows])


def _state(atoms: Atoms) -> tuple[float, float, float, bool]:
    """Potential energy, temperature, closest pair, and whether everything is finite."""
    energy = float(atoms.get_potential_energy())
    forces = atoms.get_forces()
    finite = bool(
        math.isfinite(energy)
        and np.isfinite(forces).all()
        and np.isfinite(atoms.positions).all()
        and np.isfinite(atoms.get_momenta()).all()
    )
    dist = closest_distance(atoms) if finite else math.nan
    return energy, float(atoms.get_temperature()), dist, finite


def _start(factory: CalculatorFactory, element: str, a: float, n: int, t: float, seed: int):
    """The perfect crystal with Maxwell-Boltzmann momenta at 2T: equipartition takes half of
    the kinetic energy into the lattice, so the crystal settles near T, as cu_emt.py does."""
    atoms = conventional(element, a).repeat(n)
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, 2 * t, rng=rng)
    Stationary(atoms)
    atoms.calc = factory()
    return atoms, rng


def heating_ramp(factory: CalculatorFactory, element: str, a: float, s: HeatingRamp) -> Measured:
    """Langevin NVT with the target rising linearly from start_K to end_K.

    At fixed volume (no stress, so no barostat) and this rate, the small periodic crystal
    superheats: EMT's stays ordered past 3000 K. The checks are therefore the temperature
    reached without a failure, the potential energy's slope against temperature (a heat
    capacity, 1.5 kB for a harmonic crystal; a phase change or collapse adds to it), and the
    crystalline (Bragg) order left at the end.
    """
    atoms, rng = _start(factory, element, a, s.supercell, s.start_K, s.seed)
    atoms.set_constraint(FixCom())  # Langevin's fixcm=True is deprecated
    dyn = Langevin(
        atoms,
        timestep=s.timestep_fs * units.fs,
        temperature_K=s.start_K,
        friction=s.friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    n = len(atoms)
    traj, temps = _Trajectory(), deque(maxlen=RUNAWAY_WINDOW)
    for step in range(1, s.steps + 1):
        target = s.start_K + (s.end_K - s.start_K) * step / s.steps
        dyn.set_temperature(temperature_K=target)
        try:
            dyn.run(1)
            energy, temp, dist, finite = _state(atoms)
        except Exception as exc:  # a broken model may raise anywhere in its forward pass
            traj.failure, traj.failed_step = f"calculator error: {exc}", step
            break
        temps.append(temp)
        traj.failure = _ramp_failure(finite, dist, temps, target, s)
        if traj.failure:
            traj.failed_step = step
            break
        order = bragg_order(atoms, s.supercell)
        traj.rows.append((step * s.timestep_fs / 1000, target, temp, energy / n, order, dist))
    return _ramp_measured(traj, s)


def _ramp_failure(
    finite: bool, dist: float, temps: deque[float], target: float, s: HeatingRamp
) -> str | None:
    if not finite:
        return "non_finite"
    if dist < s.min_distance_A:
        return f"min_distance ({dist:.2f} Å)"
    mean = sum(temps) / len(temps)
    if len(temps) == RUNAWAY_WINDOW and mean > s.max_temperature_factor * target:
        return f"temperature_runaway (mean of {RUNAWAY_WINDOW} steps {mean:.0f} K)"
    return None


def _ramp_measured(traj: _Trajectory, s: HeatingRamp) -> Measured:
    out = Measured()
    rows = traj.rows
    if traj.failure is None:
        out.values["ramp_failure_free_K"] = s.end_K
        # Bin means damp the thermal noise of a small cell; the slope's bias from the
        # thermostat's lag is the same for the model and the reference.
        binned = np.array(rows[len(rows) % s.bins :]).reshape(s.bins, -1, len(rows[0])).mean(1)
        slope = np.polyfit(binned[:, 2], binned[:, 3], 1)[0]
        out.values["ramp_heat_capacity_kB"] = float(slope / units.kB)
        out.values["ramp_final_order"] = float(binned[-1, 4])
    else:
        step = traj.failed_step or 0
        reached = s.start_K + (s.end_K - s.start_K) * (step - 1) / s.steps
        out.values.update(
            ramp_failure_free_K=reached, ramp_heat_capacity_kB=None, ramp_final_order=None
        )
        out.values["ramp_failure_step"] = float(step)
        out.notes.append(
            f"ramp failed at step {step} (target {reached:.0f} K): {traj.failure}; heat "
            "capacity and final order are only measured over a whole ramp"
        )
    if rows:
        out.values["ramp_min_distance_A"] = float(traj.column(5).min())
        out.values["ramp_max_temperature_K"] = float(traj.column(2).max())
        keep = [i for i in range(len(rows)) if (i + 1) % s.trace_every == 0 or i == len(rows) - 1]
        t = [rows[i][0] for i in keep]
        for name, col in (
            ("ramp_target_K", 1),
            ("ramp_temperature_K", 2),
            ("ramp_potential_eV_per_atom", 3),
            ("ramp_order", 4),
            ("ramp_min_distance_A", 5),
        ):
            out.curves[name] = Curve(x=t, y=[rows[i][col] for i in keep])
    return out


def nve(factory: CalculatorFactory, element: str, a: float, s: NVE) -> Measured:
    """Velocity Verlet; the drift is the slope of a linear fit of total energy per atom
    against time over the whole run (the scorecard's measure, on a longer run)."""
    atoms, _ = _start(factory, element, a, s.supercell, s.temperature_K, s.seed)
    dyn = VelocityVerlet(atoms, timestep=s.timestep_fs * units.fs)
    n, dt_ps = len(atoms), s.timestep_fs / 1000
    traj = _Trajectory()
    for step in range(s.steps + 1):
        try:
            if step:
                dyn.run(1)
            energy, temp, dist, finite = _state(atoms)
        except Exception as exc:  # a broken model may raise anywhere in its forward pass
            traj.failure, traj.failed_step = f"calculator error: {exc}", step
            break
        if not finite or dist < s.min_distance_A:
            traj.failure = "non_finite" if not finite else f"min_distance ({dist:.2f} Å)"
            traj.failed_step = step
            break
        total = energy + float(atoms.get_kinetic_energy())
        traj.rows.append((step * dt_ps, total / n, temp, dist))
    out = Measured()
    if traj.failure is None:
        t, e = traj.column(0), traj.column(1)
        out.values["nve_drift_meV_per_atom_per_ps"] = abs(float(np.polyfit(t, e, 1)[0])) * 1000
        out.values["nve_mean_temperature_K"] = float(traj.column(2).mean())
    else:
        out.values["nve_drift_meV_per_atom_per_ps"] = None
        out.notes.append(f"NVE failed at step {traj.failed_step}: {traj.failure}")
    if traj.rows:
        keep = range(0, len(traj.rows), s.trace_every)
        e0 = traj.rows[0][1]
        out.curves["nve_total_meV_per_atom"] = Curve(
            x=[traj.rows[i][0] for i in keep], y=[(traj.rows[i][1] - e0) * 1000 for i in keep]
        )
        out.curves["nve_temperature_K"] = Curve(
            x=[traj.rows[i][0] for i in keep], y=[traj.rows[i][2] for i in keep]
        )
    return out
