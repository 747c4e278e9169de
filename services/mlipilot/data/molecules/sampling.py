"""Off-equilibrium configurations of one molecule: RDKit 3D embedding, then normal-mode sampling.

Why normal modes on GFN2-xTB: a Hessian costs 6N tblite gradients (well under a second for
QM7 sizes) and each configuration is one Gaussian draw, so sampling is cheap and, unlike hot
MD, does not amplify last-bit differences between machines. The steps: ETKDG embedding with
a seed, MMFF clean-up, GFN2-xTB relaxation (BFGS), finite-difference Hessian, then displace
along the vibrational modes with classical Boltzmann amplitudes at a temperature per
configuration, so labels carry real forces rather than near-zero ones.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize import BFGS
from rdkit import Chem
from rdkit.Chem import AllChem

from mlipilot.data.molecules.molecule_list import Molecule
from mlipilot.data.molecules.xtb import Gfn2Xtb, XtbError

# Stored positions are rounded so the labelled geometry is exactly the stored one.
POSITION_DECIMALS = 8


@dataclass(frozen=True)
class SamplingSettings:
    configs_per_molecule: int = 4
    temperatures_K: tuple[float, ...] = (300.0, 600.0, 1000.0)
    # Soft torsions would get huge classical amplitudes: treat modes below this as this stiff.
    min_wavenumber_cm: float = 100.0
    relax_fmax: float = 0.02  # eV/Å
    relax_steps: int = 300
    hessian_step: float = 0.005  # Å, central differences
    # A draw is redrawn when a bond stretches beyond this factor or atoms come this close.
    max_bond_stretch: float = 1.4
    min_distance: float = 0.7  # Å
    max_redraws: int = 20

    def as_params(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class SamplingError(RuntimeError):
    """A molecule could not be embedded or relaxed; it is recorded and skipped."""


def molecule_seed(seed: int, mol_id: str) -> np.random.SeedSequence:
    """One independent stream per molecule: adding molecules never changes another's draws."""
    return np.random.SeedSequence([seed, zlib.crc32(mol_id.encode())])


def sample_configurations(mol: Molecule, seed: int, settings: SamplingSettings) -> list[Atoms]:
    ss = molecule_seed(seed, mol.mol_id)
    rd = embed(mol.smiles, int(ss.generate_state(1)[0] & 0x7FFFFFFF))
    numbers = np.array([a.GetAtomicNum() for a in rd.GetAtoms()])
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in rd.GetBonds()])
    xtb = Gfn2Xtb(numbers, rd.GetConformer().GetPositions())
    eq = relax(numbers, rd.GetConformer().GetPositions(), xtb, settings)
    eq_lengths = _bond_lengths(eq, bonds)
    if np.any(eq_lengths > settings.max_bond_stretch * _bond_lengths(_rdkit_pos(rd), bonds)):
        raise SamplingError(f"{mol.mol_id} {mol.smiles}: a bond broke in the GFN2-xTB relaxation")
    masses = Atoms(numbers=numbers).get_masses()
    freqs2, modes = normal_modes(eq, masses, hessian(eq, xtb, settings.hessian_step))
    rng = np.random.default_rng(ss)
    frames = []
    for k in range(settings.configs_per_molecule):
        temperature = settings.temperatures_K[k % len(settings.temperatures_K)]
        pos = _draw(rng, eq, masses, freqs2, modes, temperature, bonds, eq_lengths, settings)
        atoms = Atoms(numbers=numbers, positions=np.round(pos, POSITION_DECIMALS))
        atoms.info.update(
            mol_id=mol.mol_id,
            smiles=mol.smiles,
            config_id=f"{mol.mol_id}-c{k:03d}",
            config_type=f"nms_{temperature:g}K",
        )
        frames.append(atoms)
    return frames


def embed(smiles: str, rdkit_seed: int) -> Chem.Mol:
    rd = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = rdkit_seed
    if AllChem.EmbedMolecule(rd, params) != 0:
        params.useRandomCoords = True  # the documented fallback for awkward ring systems
        if AllChem.EmbedMolecule(rd, params) != 0:
            raise SamplingError(f"{smiles}: RDKit could not embed a 3D geometry")
    if AllChem.MMFFHasAllMoleculeParams(rd):
        AllChem.MMFFOptimizeMolecule(rd, maxIters=2000)
    else:
        AllChem.UFFOptimizeMolecule(rd, maxIters=2000)
    return rd


class _XtbAse(Calculator):
    implemented_properties = ("energy", "forces")

    def __init__(self, xtb: Gfn2Xtb) -> None:
        super().__init__()
        self._xtb = xtb

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):  # type: ignore[no-untyped-def]
        super().calculate(atoms, properties, system_changes)
        energy, forces = self._xtb.energy_forces(self.atoms.positions)
        self.results = {"energy": energy, "forces": forces}


def relax(
    numbers: np.ndarray, positions: np.ndarray, xtb: Gfn2Xtb, settings: SamplingSettings
) -> np.ndarray:
    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = _XtbAse(xtb)
    try:
        BFGS(atoms, logfile=None).run(fmax=settings.relax_fmax, steps=settings.relax_steps)
    except XtbError as exc:
        raise SamplingError(f"GFN2-xTB relaxation failed: {exc}") from exc
    return atoms.positions.copy()


def hessian(positions: np.ndarray, xtb: Gfn2Xtb, step: float) -> np.ndarray:
    """Cartesian Hessian (eV/Å²) by central differences of GFN2-xTB forces."""
    n3 = positions.size
    h = np.empty((n3, n3))
    flat = positions.reshape(-1)
    for i in range(n3):
        plus, minus = flat.copy(), flat.copy()
        plus[i] += step
        minus[i] -= step
        f_plus = xtb.energy_forces(plus.reshape(-1, 3))[1].reshape(-1)
        f_minus = xtb.energy_forces(minus.reshape(-1, 3))[1].reshape(-1)
        h[:, i] = -(f_plus - f_minus) / (2 * step)
    return 0.5 * (h + h.T)


def normal_modes(
    positions: np.ndarray, masses: np.ndarray, h: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Vibrational eigenvalues (eV/(Å² amu)) and mass-weighted modes, rigid motions removed."""
    sqrt_m = np.repeat(np.sqrt(masses), 3)
    hw = h / np.outer(sqrt_m, sqrt_m)
    rigid = _rigid_motions(positions, masses)
    proj = np.eye(len(sqrt_m)) - rigid @ rigid.T
    vals, vecs = np.linalg.eigh(proj @ hw @ proj)
    # The rigid motions are exact zeros after projection: drop the columns that span them.
    overlap = np.linalg.norm(rigid.T @ vecs, axis=0)
    keep = np.argsort(overlap)[: len(sqrt_m) - rigid.shape[1]]
    keep.sort()
    return vals[keep], vecs[:, keep]


def _rigid_motions(positions: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Orthonormal mass-weighted translations and rotations (5 for a linear molecule)."""
    centred = positions - np.average(positions, axis=0, weights=masses)
    sqrt_m = np.sqrt(masses)[:, None]
    vectors = []
    for axis in np.eye(3):
        vectors.append((sqrt_m * axis * np.ones_like(positions)).reshape(-1))
        vectors.append((sqrt_m * np.cross(axis, centred)).reshape(-1))
    u, s, _ = np.linalg.svd(np.array(vectors).T, full_matrices=False)
    # Singular values are sqrt(mass) and sqrt(moment of inertia). A linear molecule relaxed
    # numerically keeps ~1e-3 Å off its axis (I ~ 1e-6 amu Å²): that rotation is not a real
    # motion, while any bent molecule has I > 0.5 amu Å². Cut at I = 1e-3 amu Å².
    return u[:, s > np.sqrt(1e-3)]


def _draw(
    rng: np.random.Generator,
    eq: np.ndarray,
    masses: np.ndarray,
    freqs2: np.ndarray,
    modes: np.ndarray,
    temperature: float,
    bonds: np.ndarray,
    eq_lengths: np.ndarray,
    s: SamplingSettings,
) -> np.ndarray:
    # omega^2 in eV/(Å² amu); the floor keeps soft torsions from swinging atoms into each other.
    floor = (s.min_wavenumber_cm * 100 * units._c * 2 * np.pi) ** 2 * units._amu * 1e-20 / units._e
    stiff = np.maximum(np.abs(freqs2), floor)
    sigma = np.sqrt(units.kB * temperature / stiff)  # classical harmonic amplitude per mode
    sqrt_m = np.repeat(np.sqrt(masses), 3)
    scale = 1.0
    for attempt in range(s.max_redraws):
        q = rng.normal(0.0, sigma * scale)
        pos = eq + ((modes @ q) / sqrt_m).reshape(-1, 3)
        if _plausible(pos, bonds, eq_lengths, s):
            return pos
        if attempt >= s.max_redraws // 2:
            scale *= 0.8  # still implausible: shrink, rather than give up on the molecule
    raise SamplingError(f"no plausible configuration in {s.max_redraws} draws at {temperature} K")


def _plausible(
    pos: np.ndarray, bonds: np.ndarray, eq_lengths: np.ndarray, s: SamplingSettings
) -> bool:
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    d[np.diag_indices_from(d)] = np.inf
    if d.min() < s.min_distance:
        return False
    return bool(np.all(_bond_lengths(pos, bonds) <= s.max_bond_stretch * eq_lengths))


def _bond_lengths(pos: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    if len(bonds) == 0:
        return np.zeros(0)
    return np.linalg.norm(pos[bonds[:, 0]] - pos[bonds[:, 1]], axis=1)


def _rdkit_pos(rd: Chem.Mol) -> np.ndarray:
    return rd.GetConformer().GetPositions()
