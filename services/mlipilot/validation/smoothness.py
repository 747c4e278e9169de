"""Smoothness: energy curves free of spurious minima, forces that integrate to the energy.

Two curves, both in the suite's cell (the data's lattice constant), so model and reference
walk the same geometries:

- E(a) of the conventional cell over a wide range of compression and expansion: one minimum;
- one atom of the crystal pushed along [110] straight at its nearest neighbour, from its
  lattice site down to ``to_A``: the energy rises all the way (no extremum inside), the
  short-range repulsion that the training data (thermal MD, small strains) barely samples
  and that hot MD depends on.

Along the pushed-atom path, the force on the moving atom, projected on the path, must
integrate to the energy change: the largest |ΔE - ∫F·ds| / Δs over the grid's steps (eV/Å)
is a finite-difference test of energy against force. It catches a jump in the force or the
energy (a cutoff without a smooth tail, a neighbour-list artefact) and non-conservative
forces; for a smooth potential it is the trapezoid rule's error, ~ step² × E''' / 12.
"""

from __future__ import annotations

import numpy as np

from mlipilot.validation.crystal import conventional
from mlipilot.validation.result import CalculatorFactory, Curve, Measured
from mlipilot.validation.suite import Smoothness


def count_extrema(energies: np.ndarray, flat: float) -> float | None:
    """Interior extrema of a sampled curve: sign changes of its steps, steps below ``flat``
    counting as no change (so numerical noise on a plateau is not a minimum). None when an
    energy is not finite."""
    if not np.isfinite(energies).all():
        return None
    steps = np.diff(energies)
    signs = np.sign(steps)[np.abs(steps) > flat]
    return float(np.count_nonzero(signs[1:] != signs[:-1]))


def volume_curve(
    factory: CalculatorFactory, element: str, a: float, s: Smoothness
) -> tuple[float | None, Curve]:
    lattice = a * np.linspace(s.volume.lo, s.volume.hi, s.volume.points)
    energies = []
    for x in lattice:
        atoms = conventional(element, x)
        atoms.calc = factory()
        energies.append(float(atoms.get_potential_energy()) / len(atoms))
    n = len(conventional(element, a))
    extrema = count_extrema(np.array(energies) * n, s.flat_eV)
    return extrema, Curve(x=list(lattice), y=energies)


def pushed_atom(
    factory: CalculatorFactory, element: str, a: float, s: Smoothness
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distances d to the neighbour, the cell's energy, and dE/dd from the force (F0 · u)."""
    atoms = conventional(element, a).repeat(s.pair.supercell)
    u = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)  # atom 0 sits at the origin
    d0 = a / np.sqrt(2)  # its neighbour at (a/2, a/2, 0)
    dists = np.arange(d0, s.pair.to_A - 1e-9, -s.pair.step_A)
    atoms.calc = factory()
    energies, slopes = [], []
    for d in dists:
        atoms.positions[0] = (d0 - d) * u
        energies.append(float(atoms.get_potential_energy()))
        # E(d) with x0 = (d0 - d) u: dE/dd = -grad E . u = F0 . u
        slopes.append(float(atoms.get_forces()[0] @ u))
    return dists, np.array(energies), np.array(slopes)


def force_mismatch(dists: np.ndarray, energies: np.ndarray, slopes: np.ndarray) -> float:
    """max |ΔE - Δd (g_i + g_i+1)/2| / |Δd| over the steps, g = dE/dd from the forces."""
    dd = np.diff(dists)
    work = dd * (slopes[1:] + slopes[:-1]) / 2
    return float(np.max(np.abs(np.diff(energies) - work) / np.abs(dd)))


def smoothness(factory: CalculatorFactory, element: str, a: float, s: Smoothness) -> Measured:
    volume_extrema, volume = volume_curve(factory, element, a, s)
    dists, energies, slopes = pushed_atom(factory, element, a, s)
    relative = energies - energies[0]
    return Measured(
        values={
            "volume_curve_extrema": volume_extrema,
            "pair_curve_extrema": count_extrema(energies, s.flat_eV),
            "pair_force_mismatch_eV_per_A": force_mismatch(dists, energies, slopes),
            "pair_energy_at_closest_eV": float(relative[-1]),
        },
        curves={
            "volume_energy_eV_per_atom": volume,
            "pair_energy_eV": Curve(x=list(dists), y=list(relative)),
            "pair_slope_eV_per_A": Curve(x=list(dists), y=list(slopes)),
        },
    )
