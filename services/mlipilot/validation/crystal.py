"""Static properties of the fcc crystal: equation of state, elastic constants, vacancy,
surfaces, phonons.

Each function takes a calculator factory and the group's settings and returns what it
measured, so the same code gives the reference's value and the model's. Every property is
taken at the calculator's own equilibrium lattice constant ``a0`` (zero pressure for it), so a
model with a slightly wrong lattice constant is not also charged for the strain that would
put it at the reference's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc100, fcc110, fcc111
from ase.eos import EquationOfState as AseEOS
from ase.optimize import LBFGS
from ase.phonons import Phonons as AsePhonons
from scipy.optimize import minimize_scalar

from mlipilot.validation.result import CalculatorFactory, Curve, Measured
from mlipilot.validation.suite import (
    PHONON_METRICS,
    SURFACE_METRICS,
    Elastic,
    EquationOfState,
    Phonons,
    Relaxation,
    Surfaces,
    Vacancy,
)

EV_PER_A2_TO_J_PER_M2 = units._e * 1e20  # 1 eV/Å² = 16.02 J/m²
EV_PER_THZ = units._hplanck / units._e * 1e12  # h x 1 THz in eV


def conventional(element: str, a: float) -> Atoms:
    return bulk(element, "fcc", a=a, cubic=True)


def _energy(atoms: Atoms, factory: CalculatorFactory) -> float:
    atoms.calc = factory()
    return float(atoms.get_potential_energy())


def equilibrium_lattice(
    factory: CalculatorFactory, element: str, a_guess: float, search_fraction: float
) -> float:
    """The lattice constant minimising the conventional cell's energy within a_guess x
    (1 ± search_fraction); an error when the minimum sits on the edge (none inside)."""
    lo, hi = a_guess * (1 - search_fraction), a_guess * (1 + search_fraction)
    found = minimize_scalar(
        lambda a: _energy(conventional(element, a), factory),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-5},
    )
    a0 = float(found.x)
    if not np.isfinite(found.fun) or min(a0 - lo, hi - a0) < 1e-3 * a_guess:
        raise ValueError(
            f"no energy minimum of the fcc cell between a = {lo:.3f} and {hi:.3f} Å "
            f"(the search ended at {a0:.3f} Å)"
        )
    return a0


def equation_of_state(
    factory: CalculatorFactory, element: str, a0: float, s: EquationOfState
) -> Measured:
    """Fit E(V) over a0 x (1 ± strain): the fitted lattice constant and bulk modulus."""
    a = a0 * (1 + np.linspace(-s.strain, s.strain, s.points))
    energies = [_energy(conventional(element, x), factory) for x in a]
    eos = AseEOS(a**3, energies, eos=s.eos)
    v0, e0, b = eos.fit(warn=False)
    n = len(conventional(element, a0))
    return Measured(
        values={
            "lattice_constant_A": float(v0 ** (1 / 3)),
            "bulk_modulus_GPa": float(b / units.GPa),
            "cohesive_energy_eV_per_atom": float(e0 / n),
        },
        curves={"eos_energy_eV_per_atom": Curve(x=list(a), y=[e / n for e in energies])},
    )


# Strain tensors (Voigt: exx, eyy, ezz, 2eyz, 2exz, 2exy) whose energy density is
# (1/2) C eps^2 with C = C11, C11 + C12 (x 2, for two equal axes), C44.
_STRAINS = {
    "uniaxial": lambda e: np.diag([e, 0.0, 0.0]),  # dE/V = C11 e^2 / 2
    "biaxial": lambda e: np.diag([e, e, 0.0]),  # dE/V = (C11 + C12) e^2
    "shear": lambda e: np.array([[0, e / 2, 0], [e / 2, 0, 0], [0, 0, 0]]),  # dE/V = C44 e^2/2
}


def elastic(factory: CalculatorFactory, element: str, a0: float, s: Elastic) -> Measured:
    """C11, C12, C44 from the curvature of E(strain) at a0.

    fcc is a Bravais lattice (every atom an inversion centre), so homogeneous strain needs no
    internal relaxation. The fit is a quartic over ±max_strain, its ε² term the curvature.
    """
    base = conventional(element, a0)
    volume = base.get_volume()
    eps = np.linspace(-s.max_strain, s.max_strain, s.points)
    curvature, curves = {}, {}
    for name, tensor in _STRAINS.items():
        energies = []
        for e in eps:
            atoms = base.copy()
            atoms.set_cell(base.cell.array @ (np.eye(3) + tensor(e)), scale_atoms=True)
            energies.append(_energy(atoms, factory))
        density = (np.array(energies) - min(energies)) / volume / units.GPa
        curvature[name] = 2 * np.polyfit(eps, energies, 4)[-3] / volume / units.GPa
        curves[f"elastic_{name}_GPa"] = Curve(x=list(eps), y=list(density))
    c11 = curvature["uniaxial"]
    c12 = curvature["biaxial"] / 2 - c11
    return Measured(
        values={"c11_GPa": c11, "c12_GPa": c12, "c44_GPa": curvature["shear"]}, curves=curves
    )


def _relax(atoms: Atoms, r: Relaxation, what: str) -> tuple[float, str | None]:
    """Relax in place with L-BFGS; the energy, and a note when it stopped before converging."""
    opt = LBFGS(atoms, logfile=None)
    converged = opt.run(fmax=r.fmax_eV_per_A, steps=r.max_steps)
    energy = float(atoms.get_potential_energy())
    if converged:
        return energy, None
    fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    return energy, f"{what}: not relaxed in {r.max_steps} steps (max force {fmax:.3g} eV/Å)"


def vacancy(factory: CalculatorFactory, element: str, a0: float, s: Vacancy) -> Measured:
    """E_f = E(N-1, relaxed) - (N-1)/N E(N), in an n x n x n conventional supercell at a0."""
    perfect = conventional(element, a0).repeat(s.supercell)
    n = len(perfect)
    e_perfect = _energy(perfect, factory)
    defect = perfect.copy()
    del defect[0]
    e_unrelaxed = _energy(defect, factory)
    e_relaxed, note = _relax(defect, s.relax, "vacancy")
    return Measured(
        values={
            "vacancy_formation_eV": e_relaxed - (n - 1) / n * e_perfect,
            "vacancy_formation_unrelaxed_eV": e_unrelaxed - (n - 1) / n * e_perfect,
        },
        notes=[note] if note else [],
    )


_SLABS = {"100": fcc100, "110": fcc110, "111": fcc111}


def surfaces(factory: CalculatorFactory, element: str, a0: float, s: Surfaces) -> Measured:
    """gamma = (E_slab - n E_bulk) / 2A for relaxed symmetric 1x1 slabs at a0."""
    bulk_cell = conventional(element, a0)
    e_bulk = _energy(bulk_cell, factory) / len(bulk_cell)
    values: dict[str, float | None] = {}
    notes = []
    for facet, layers in s.layers.items():
        slab = _SLABS[facet](element, size=(1, 1, layers), a=a0, vacuum=s.vacuum_A)
        slab.pbc = True
        area = float(np.linalg.norm(np.cross(slab.cell[0], slab.cell[1])))
        e_unrelaxed = _energy(slab, factory)
        e_relaxed, note = _relax(slab, s.relax, f"({facet}) slab")
        notes += [note] if note else []
        for tag, e in (("", e_relaxed), ("_unrelaxed", e_unrelaxed)):
            gamma = (e - len(slab) * e_bulk) / (2 * area) * EV_PER_A2_TO_J_PER_M2
            values[SURFACE_METRICS[facet].replace("_J_per", f"{tag}_J_per")] = gamma
    return Measured(values=values, notes=notes)


def phonons(factory: CalculatorFactory, element: str, a0: float, s: Phonons) -> Measured:
    """Frequencies at X and L (transverse: the mean of the two lowest) and the band structure
    along the standard fcc path, from finite displacements in an n x n x n supercell."""
    prim = bulk(element, "fcc", a=a0)
    path = prim.cell.bandpath(npoints=90)
    with tempfile.TemporaryDirectory(prefix="mlipilot-phonons-") as tmp:
        ph = AsePhonons(
            prim,
            factory(),
            supercell=(s.supercell,) * 3,
            delta=s.displacement_A,
            name=str(Path(tmp) / "phonon"),
        )
        ph.run()
        ph.read(acoustic=True)
        special = path.special_points
        at_xl = ph.band_structure([special["X"], special["L"]], verbose=False) / EV_PER_THZ
        bands = ph.band_structure(path.kpts, verbose=False) / EV_PER_THZ
    values: dict[str, float | None] = {}
    for point, freqs in zip(("X", "L"), np.sort(at_xl, axis=1), strict=True):
        values[f"phonon_{point}_TA_THz"] = float(freqs[:2].mean())
        values[f"phonon_{point}_LA_THz"] = float(freqs[2])
    assert set(values) == set(PHONON_METRICS)
    x, special_x, labels = path.get_linear_kpoint_axis()
    # As a fraction of the path: its length in 1/Å scales with 1/a0, which differs by calculator.
    x, special_x = x / x[-1], special_x / x[-1]
    curves = {
        f"phonon_band_{i}_THz": Curve(x=list(x), y=list(b))
        for i, b in enumerate(np.sort(bands, axis=1).T)
    }
    curves["phonon_special_points"] = Curve(
        x=list(special_x), y=[0.0] * len(labels), labels=list(labels)
    )
    return Measured(values=values, curves=curves)
