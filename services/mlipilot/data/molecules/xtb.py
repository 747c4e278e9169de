"""GFN2-xTB energies and forces through tblite, in ASE units (eV, Å).

tblite works in atomic units: positions in Bohr, gradient in Hartree/Bohr (forces are minus
the gradient). One Calculator is reused across geometries of one molecule: its first call
costs 0.1-0.2 s, later ones milliseconds.

Every call runs on one OpenMP thread: tblite's threaded sums round differently with the
thread count, and a sampled geometry (relaxation, Hessian, normal modes) would then depend
on the machine's cores and on which backend ran it. Molecules this small gain nothing from
threads anyway.
"""

from __future__ import annotations

import numpy as np
from ase.units import Bohr, Hartree
from threadpoolctl import ThreadpoolController


class XtbError(RuntimeError):
    """tblite failed (most often: SCF not converged)."""


class Gfn2Xtb:
    """A GFN2-xTB evaluator for one molecule (fixed atoms, changing positions)."""

    def __init__(self, numbers: np.ndarray, positions: np.ndarray, *, max_iter: int = 250):
        from tblite.interface import Calculator

        self._calc = Calculator("GFN2-xTB", np.asarray(numbers), np.asarray(positions) / Bohr)
        # Found once, after tblite's OpenMP runtime is loaded: a scan per call costs 1 ms.
        self._threads = ThreadpoolController()
        self._calc.set("verbosity", 0)
        self._calc.set("max-iter", max_iter)

    def energy_forces(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        from tblite.interface import TBLiteRuntimeError

        self._calc.update(positions=np.asarray(positions, dtype=float) / Bohr)
        try:
            with self._threads.limit(limits=1, user_api="openmp"):
                res = self._calc.singlepoint()
        except TBLiteRuntimeError as exc:
            raise XtbError(str(exc)) from exc
        energy = float(res.get("energy")) * Hartree
        forces = -np.asarray(res.get("gradient")) * (Hartree / Bohr)
        return energy, forces


def gfn2_energy_forces(
    numbers: np.ndarray, positions: np.ndarray, *, max_iter: int = 250
) -> tuple[float, np.ndarray]:
    return Gfn2Xtb(numbers, positions, max_iter=max_iter).energy_forces(positions)
