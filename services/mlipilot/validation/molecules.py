"""Held-out molecules against the label level: relaxed geometry, harmonic frequencies, and a
long hot NVT judged by Fu et al.'s bond criterion ("Forces are not enough", TMLR 2023).

The molecules are the last ones of the shipped QM7-like list (campaigns take theirs from its
start), embedded by RDKit with a fixed seed and relaxed at the reference level. Every group
starts each molecule from that reference minimum, for the model and the reference alike, so the
two run the same inputs through the same code. What one calculator gets wrong on one molecule
(a relaxation that raises, a run that blows up) is recorded in its notes and counts against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.optimize import BFGS

from mlipilot.data.molecules.molecule_list import load_molecule_list
from mlipilot.data.molecules.sampling import embed, normal_modes
from mlipilot.data.molecules.xtb import Gfn2Xtb
from mlipilot.scoring.md_molecular import MolecularCheck
from mlipilot.scoring.spec import MolecularSettings
from mlipilot.validation.dynamics import thermalize_momenta
from mlipilot.validation.result import CalculatorFactory, Curve, GroupRun, Measured
from mlipilot.validation.suite import (
    Geometry,
    MolecularNVT,
    MoleculeSelection,
    Relaxation,
    Vibrations,
)

# A Hessian eigenvalue of 1 eV/(Å² amu) is this many cm^-1: sqrt(eV/(amu Å²)) / (2 pi c).
CM1_PER_SQRT_EIGEN = math.sqrt(units._e / (units._amu * 1e-20)) / (2 * math.pi * units._c * 100)
BONDS = MolecularSettings()  # which pairs are bonds (1.2 x covalent radii), for geometry


@dataclass(frozen=True)
class HeldOut:
    """One held-out molecule at the reference's minimum."""

    mol_id: str
    smiles: str
    minimum: Atoms


class XtbCalculator(Calculator):
    """GFN2-xTB (tblite) for any molecule: one evaluator per atom sequence, reused as the
    positions change (its first call costs 0.1-0.2 s, later ones milliseconds)."""

    implemented_properties = ("energy", "forces")

    def __init__(self) -> None:
        super().__init__()
        self._by_numbers: dict[tuple[int, ...], Gfn2Xtb] = {}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):  # type: ignore[no-untyped-def]
        super().calculate(atoms, properties, system_changes)
        key = tuple(int(z) for z in self.atoms.numbers)
        xtb = self._by_numbers.get(key)
        if xtb is None:
            xtb = self._by_numbers[key] = Gfn2Xtb(self.atoms.numbers, self.atoms.positions)
        energy, forces = xtb.energy_forces(self.atoms.positions)
        self.results = {"energy": energy, "forces": forces}


def held_out_molecules(
    selection: MoleculeSelection, numbers: set[int] | None, reference: CalculatorFactory
) -> tuple[list[HeldOut], list[str]]:
    """The suite's molecules made only of ``numbers`` (None: any), at the reference's
    minimum, and notes on the ones left out and why."""
    chosen, notes = [], []
    for mol in load_molecule_list()[-selection.last :]:
        rd = embed(mol.smiles, selection.embed_seed)
        atoms = Atoms(
            numbers=[a.GetAtomicNum() for a in rd.GetAtoms()],
            positions=rd.GetConformer().GetPositions(),
        )
        unknown = sorted(set(atoms.numbers.tolist()) - numbers) if numbers is not None else []
        if unknown:
            notes.append(f"{mol.mol_id} left out: the model knows no Z={unknown}")
            continue
        if len(atoms) > selection.max_atoms:
            notes.append(f"{mol.mol_id} left out: {len(atoms)} atoms > {selection.max_atoms}")
            continue
        atoms.calc = reference()
        if not relax(atoms, selection.relax):
            raise RuntimeError(f"{mol.mol_id} ({mol.smiles}): the reference did not relax")
        chosen.append(HeldOut(mol.mol_id, mol.smiles, Atoms(atoms.numbers, atoms.positions)))
    if not chosen:
        raise ValueError(f"no held-out molecule the model can run ({'; '.join(notes)})")
    return chosen, notes


def relax(atoms: Atoms, settings: Relaxation) -> bool:
    """BFGS to ``fmax``; whether it got there within ``max_steps``."""
    return bool(
        BFGS(atoms, logfile=None).run(fmax=settings.fmax_eV_per_A, steps=settings.max_steps)
    )


def _at_minimum(m: HeldOut, factory: CalculatorFactory, settings: Relaxation) -> tuple[Atoms, str]:
    """The molecule relaxed by the calculator from the reference minimum, and a note when the
    relaxation did not converge."""
    atoms = m.minimum.copy()
    atoms.calc = factory()
    converged = relax(atoms, settings)
    return atoms, "" if converged else f"{m.mol_id}: relaxation not converged"


def geometry(
    factory: CalculatorFactory, molecules: Sequence[HeldOut], group: Geometry, _: GroupRun | None
) -> Measured:
    errors, per_molecule, notes = [], [], []
    for m in molecules:
        atoms, note = _at_minimum(m, factory, group.relax)
        notes += [note] if note else []
        bonds = MolecularCheck.of(m.minimum, BONDS, m.mol_id)
        error = np.abs(bonds.bond_lengths(atoms.positions) - bonds.reference_A)
        errors.append(error)
        per_molecule.append(float(error.mean()) if len(error) else 0.0)
    every = np.concatenate(errors)
    ids = [m.mol_id for m in molecules]
    return Measured(
        values={
            "geometry_bond_mae_A": float(every.mean()),
            "geometry_max_bond_error_A": float(every.max()),
        },
        curves={"bond_mae_A": Curve(x=list(range(len(ids))), y=per_molecule, labels=ids)},
        notes=notes,
    )


def frequencies_cm1(atoms: Atoms, displacement_A: float) -> list[float]:
    """Harmonic frequencies (cm^-1, ascending; imaginary ones negative) from central
    differences of the forces, rigid motions projected out."""
    n3 = 3 * len(atoms)
    hessian = np.empty((n3, n3))
    start = atoms.positions.copy()
    for i in range(n3):
        column = []
        for sign in (1, -1):
            moved = start.copy().reshape(-1)
            moved[i] += sign * displacement_A
            atoms.positions = moved.reshape(-1, 3)
            column.append(atoms.get_forces().reshape(-1))
        hessian[:, i] = -(column[0] - column[1]) / (2 * displacement_A)
    atoms.positions = start
    values, _ = normal_modes(start, atoms.get_masses(), 0.5 * (hessian + hessian.T))
    return sorted(float(np.sign(v) * math.sqrt(abs(v)) * CM1_PER_SQRT_EIGEN) for v in values)


def vibrations(
    factory: CalculatorFactory,
    molecules: Sequence[HeldOut],
    group: Vibrations,
    reference: GroupRun | None,
) -> Measured:
    """Frequencies at the calculator's own minimum. The mode-by-mode error is against the
    reference's run of this group (``reference``; None when this is the reference)."""
    curves: dict[str, Curve] = {}
    deviations: list[float] = []
    imaginary, notes = 0, []
    for m in molecules:
        atoms, note = _at_minimum(m, factory, group.relax)
        notes += [note] if note else []
        freqs = frequencies_cm1(atoms, group.displacement_A)
        curves[m.mol_id] = Curve(x=list(range(len(freqs))), y=freqs)
        imaginary += sum(f < -group.imaginary_below_cm1 for f in freqs)
        theirs = reference.curves.get(m.mol_id) if reference is not None else curves[m.mol_id]
        if theirs is None or len(theirs.y) != len(freqs):
            raise ValueError(f"{m.mol_id}: no reference frequencies to pair with")
        deviations += [abs(a - b) for a, b in zip(freqs, theirs.y, strict=True) if b is not None]
    return Measured(
        values={
            "frequency_mae_cm1": float(np.mean(deviations)),
            "imaginary_modes": float(imaginary),
            "frequency_max_error_cm1": float(np.max(deviations)),
        },
        curves=curves,
        notes=notes,
    )


def nvt(
    factory: CalculatorFactory,
    molecules: Sequence[HeldOut],
    group: MolecularNVT,
    _: GroupRun | None,
) -> Measured:
    """Langevin NVT of each molecule from its reference minimum at ``temperature_K``; a run
    ends at its first failure: non-finite positions, a bond off by more than the threshold,
    or the molecule in pieces."""
    settings = MolecularSettings(
        max_bond_deviation_A=group.max_bond_deviation_A,
        bond_factor=group.bond_factor,
        fragment_factor=group.fragment_factor,
    )
    stable, worst, curves, notes = 0, 0.0, {}, []
    for index, m in enumerate(molecules):
        check = MolecularCheck.of(m.minimum, settings, m.mol_id)
        failure, trace = _nvt_run(m, index, factory, group, check)
        deviations = [d for _, d in trace]
        worst = max(worst, max(deviations, default=0.0))
        curves[m.mol_id] = Curve(x=[t for t, _ in trace], y=deviations)
        if failure is None:
            stable += 1
        else:
            notes.append(f"{m.mol_id}: {failure}")
    return Measured(
        values={"nvt_stable_fraction": stable / len(molecules), "nvt_max_bond_deviation_A": worst},
        curves=curves,
        notes=notes,
    )


def _nvt_run(
    m: HeldOut, index: int, factory: CalculatorFactory, group: MolecularNVT, check: MolecularCheck
) -> tuple[str | None, list[tuple[float, float]]]:
    """One molecule's run: why it failed (None if it did not) and its (ps, deviation) trace."""
    atoms = m.minimum.copy()
    atoms.calc = factory()
    atoms.set_constraint(FixCom())  # ASE's own fixcm is deprecated: it biases small systems
    rng = np.random.default_rng([group.seed, index])  # the same noise for model and reference
    thermalize_momenta(atoms, group.temperature_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = Langevin(
        atoms,
        timestep=group.timestep_fs * units.fs,
        temperature_K=group.temperature_K,
        friction=group.friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    trace: list[tuple[float, float]] = []
    for step in range(1, group.steps + 1):
        try:
            dyn.run(1)
        except Exception as exc:  # a calculator that raises mid-run fails the molecule
            return f"step {step}: {type(exc).__name__}: {exc}", trace
        pos = atoms.positions
        ps = step * group.timestep_fs / 1000
        if not np.isfinite(pos).all():
            return f"step {step}: non-finite positions", trace
        deviation = check.max_deviation_A(pos)
        if step % group.trace_every == 0 or deviation > group.max_bond_deviation_A:
            trace.append((ps, deviation))
        if deviation > group.max_bond_deviation_A:
            return f"step {step} ({ps:g} ps): a bond off by {deviation:.2f} Å", trace
        if check.fragmented(pos):
            return f"step {step} ({ps:g} ps): the molecule came apart", trace
    return None, trace
