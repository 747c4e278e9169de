"""Levels of theory that label a configuration with an energy (eV) and forces (eV/Å).

A level is a frozen dataclass: its fields are everything that changes the numbers, so its
``token`` keys the label cache and its ``description`` goes into every frame and manifest
(results say which level labelled them). Backends are imported on use, so the list loads
without PySCF or tblite.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import ClassVar, Protocol

import numpy as np
from ase.units import Bohr, Hartree

from mlipilot.errors import MlipilotError

SCF_NOT_CONVERGED = "scf_not_converged"
BACKEND_ERROR = "backend_error"


class LabelError(Exception):
    """A configuration could not be labelled; ``kind`` says why (recorded, then skipped)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class Level(Protocol):
    name: ClassVar[str]

    @property
    def description(self) -> str: ...

    @property
    def token(self) -> str: ...

    def label(self, numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (eV) and forces (eV/Å, shape (n, 3)); raises LabelError on failure."""
        ...


def _token(level: object, version: str) -> str:
    """Hash of the level's settings and backend version: a new version never reuses labels."""
    settings = ",".join(f"{f.name}={getattr(level, f.name)!r}" for f in fields(level))  # type: ignore[arg-type]
    return hashlib.sha256(f"{type(level).__name__}({settings})@{version}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Gfn2XtbLevel:
    """GFN2-xTB through tblite: milliseconds per molecule, for laptops, CI and previews."""

    name: ClassVar[str] = "quick"
    max_iter: int = 250

    @property
    def description(self) -> str:
        return f"quick: GFN2-xTB (tblite {_tblite_version()}), NOT B3LYP/6-31G(d)"

    @property
    def token(self) -> str:
        return _token(self, _tblite_version())

    def label(self, numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray]:
        from mlipilot.data.molecules.xtb import XtbError, gfn2_energy_forces

        try:
            return gfn2_energy_forces(numbers, positions, max_iter=self.max_iter)
        except XtbError as exc:
            kind = SCF_NOT_CONVERGED if "not converged" in str(exc) else BACKEND_ERROR
            raise LabelError(kind, f"tblite: {exc}") from exc


@dataclass(frozen=True)
class PyscfDftLevel:
    """Restricted Kohn-Sham DFT in PySCF with analytic gradients.

    ``b3lyp`` in PySCF 2.14 is Gaussian's B3LYP (VWN-RPA); ``cart=True`` gives Gaussian's
    6-31G(d) with 6 Cartesian d functions (5d differs by ~3 mHa for ethanol). Density fitting
    makes gradients 2-3x cheaper for <=0.3 mHa in energy (measured, shared/FACTS.md).
    """

    name: ClassVar[str] = "b3lyp/6-31g*"
    xc: str = "b3lyp"
    basis: str = "6-31g*"
    cart: bool = True
    density_fit: bool = True
    grid_level: int = 3
    conv_tol: float = 1e-9
    max_cycle: int = 100

    @property
    def description(self) -> str:
        df = ", density fitting" if self.density_fit else ""
        d = "6d Cartesian" if self.cart else "5d spherical"
        return (
            f"{self.name}: PySCF {_pyscf_version()} RKS {self.xc.upper()} (VWN-RPA) / "
            f"{self.basis} ({d}){df}, grid level {self.grid_level}"
        )

    @property
    def token(self) -> str:
        return _token(self, _pyscf_version())

    def label(self, numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray]:
        from pyscf import dft, gto

        mol = gto.M(
            atom=[(int(z), tuple(map(float, p))) for z, p in zip(numbers, positions, strict=True)],
            unit="Angstrom",
            basis=self.basis,
            cart=self.cart,
            charge=0,
            spin=0,
            verbose=0,
        )
        mf = dft.RKS(mol)
        mf.xc = self.xc
        mf.grids.level = self.grid_level
        mf.conv_tol = self.conv_tol
        mf.max_cycle = self.max_cycle
        if self.density_fit:
            mf = mf.density_fit()
        energy = mf.kernel()
        if not mf.converged:
            raise LabelError(
                SCF_NOT_CONVERGED,
                f"PySCF: SCF not converged in {self.max_cycle} cycles (last energy "
                f"{energy:.8f} Ha, conv_tol {self.conv_tol:g})",
            )
        gradient = mf.nuc_grad_method().kernel()  # Hartree/Bohr
        return float(energy) * Hartree, -np.asarray(gradient) * (Hartree / Bohr)


LEVELS: dict[str, Level] = {
    Gfn2XtbLevel.name: Gfn2XtbLevel(),
    PyscfDftLevel.name: PyscfDftLevel(),
}
_ALIASES = {"b3lyp/6-31g(d)": PyscfDftLevel.name, "gfn2-xtb": Gfn2XtbLevel.name}


def get_level(name: str) -> Level:
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    try:
        return LEVELS[key]
    except KeyError:
        known = ", ".join(sorted(LEVELS))
        raise MlipilotError(f"--level: unknown level {name!r}; known levels: {known}") from None


def level_slug(level: Level) -> str:
    """A file-name-safe form of the level's name (``b3lyp/6-31g*`` -> ``b3lyp_6-31g_``)."""
    return "".join(c if c.isalnum() or c in "-." else "_" for c in level.name)


def _tblite_version() -> str:
    from importlib.metadata import version

    return version("tblite")


def _pyscf_version() -> str:
    import pyscf

    return str(pyscf.__version__)
