"""Enumerate the shipped QM7-like molecule list (`python -m` this module writes the CSV).

QM7 (GDB-13 molecules with up to 7 heavy atoms of C, N, O, S) cannot be downloaded at run time,
so the project makes its own list in that spirit: heavy-atom graphs grown at random from a
seeded generator (add an atom, or close a ring of 3-7 atoms), kept when RDKit sanitizes them
and they pass GDB-13-style stability filters, deduplicated by canonical SMILES. The same seed
and RDKit version give the same list; tests/unit/test_qm7_molecules.py checks the shipped file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

import numpy as np
from rdkit import Chem, RDLogger

VALENCE = {"C": 4, "N": 3, "O": 2, "S": 2}
ELEMENT_WEIGHTS = {"C": 0.62, "N": 0.15, "O": 0.16, "S": 0.07}
BOND_ORDER_WEIGHTS = {1: 0.72, 2: 0.22, 3: 0.06}
# Heavy-atom counts 1..7, skewed to large as in QM7 (most of its molecules have 7).
SIZE_WEIGHTS = np.array([1, 2, 4, 8, 15, 28, 42], dtype=float)
RING_CLOSE_PROBABILITY = 0.25
MAX_HEAVY_ATOMS = 7
DEFAULT_COUNT = 300
DEFAULT_SEED = 0

# GDB-13 leaves out groups that are unstable or reactive; these are the ones growth can make.
_FORBIDDEN = {
    "heteroatom-heteroatom bond": "[#7,#8,#16]~[#7,#8,#16]",
    "aminal/acetal carbon": "[CX4]([#7,#8,#16])[#7,#8,#16]",
    "enol": "[OX2H1][CX3]=[CX3]",
    "enamine": "[NX3;!a;!$(N-C=O)][CX3;!a]=[CX3;!a]",
    "cumulene": "*=*=*",
    "unsaturated 3/4-ring atom": "[r3,r4]=,#*",
    "triple bond in a ring": "[R]#*",
    "atom in three rings": "[R3,R4]",
    "thiol or thioether next to C=O": "[#16][CX3]=O",
    "heteroatom on a triple bond": "[#7,#8,#16]-[CX2]#*",
}
_FORBIDDEN_PATTERNS = {name: Chem.MolFromSmarts(s) for name, s in _FORBIDDEN.items()}


def generate(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> list[str]:
    """``count`` distinct canonical SMILES, in generation order (a random mix of sizes)."""
    RDLogger.DisableLog("rdApp.*")  # failed sanitizations are expected and silently skipped
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out: list[str] = []
    sizes = np.arange(1, MAX_HEAVY_ATOMS + 1)
    for _ in range(count * 500):  # a guard: growth finds new molecules long before this
        if len(out) == count:
            return out
        size = int(rng.choice(sizes, p=SIZE_WEIGHTS / SIZE_WEIGHTS.sum()))
        smiles = _grow(rng, size)
        if smiles is not None and smiles not in seen:
            seen.add(smiles)
            out.append(smiles)
    raise RuntimeError(f"found only {len(out)} of {count} molecules; lower the count")


def acceptable(mol: Chem.Mol) -> bool:
    """Neutral, closed-shell, C/N/O/S only, at most 7 heavy atoms, no forbidden group."""
    if mol.GetNumHeavyAtoms() > MAX_HEAVY_ATOMS:
        return False
    if any(a.GetSymbol() not in VALENCE or a.GetFormalCharge() for a in mol.GetAtoms()):
        return False
    if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        return False
    return not any(mol.HasSubstructMatch(p) for p in _FORBIDDEN_PATTERNS.values())


def _grow(rng: np.random.Generator, size: int) -> str | None:
    mol = Chem.RWMol()
    mol.AddAtom(Chem.Atom(_pick(rng, ELEMENT_WEIGHTS)))
    while mol.GetNumAtoms() < size:
        if mol.GetNumAtoms() >= 3 and rng.random() < RING_CLOSE_PROBABILITY:
            _close_ring(rng, mol)
        if not _add_atom(rng, mol):
            return None  # saturated before reaching the size (e.g. C#N): draw again
    if rng.random() < RING_CLOSE_PROBABILITY:
        _close_ring(rng, mol)
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several types for impossible valences and kekulization
        return None
    if not acceptable(mol):
        return None
    return Chem.MolToSmiles(mol)


def _free_valence(mol: Chem.RWMol, idx: int) -> int:
    atom = mol.GetAtomWithIdx(idx)
    used = sum(int(b.GetBondTypeAsDouble()) for b in atom.GetBonds())
    return VALENCE[atom.GetSymbol()] - used


def _add_atom(rng: np.random.Generator, mol: Chem.RWMol) -> bool:
    element = _pick(rng, ELEMENT_WEIGHTS)
    hosts = [i for i in range(mol.GetNumAtoms()) if _free_valence(mol, i) > 0]
    if not hosts:
        return False
    host = int(rng.choice(hosts))
    limit = min(_free_valence(mol, host), VALENCE[element])
    order = _pick(rng, {k: w for k, w in BOND_ORDER_WEIGHTS.items() if k <= limit})
    new = mol.AddAtom(Chem.Atom(element))
    mol.AddBond(host, new, _BOND_TYPES[order])
    return True


def _close_ring(rng: np.random.Generator, mol: Chem.RWMol) -> None:
    dist = Chem.GetDistanceMatrix(mol, force=True)  # cached otherwise, stale after edits
    pairs = [
        (i, j)
        for i in range(mol.GetNumAtoms())
        for j in range(i + 1, mol.GetNumAtoms())
        if 2 <= dist[i, j] <= MAX_HEAVY_ATOMS - 1
        and _free_valence(mol, i) > 0
        and _free_valence(mol, j) > 0
    ]
    if pairs:
        i, j = pairs[int(rng.integers(len(pairs)))]
        double = min(_free_valence(mol, i), _free_valence(mol, j)) > 1 and rng.random() < 0.3
        mol.AddBond(i, j, _BOND_TYPES[2 if double else 1])


def _pick(rng: np.random.Generator, weights: dict) -> object:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


_BOND_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}


def render_csv(smiles: Iterable[str], *, count: int, seed: int) -> str:
    """The shipped file's text: provenance header, then ``id,smiles,heavy_atoms`` rows."""
    from rdkit import __version__ as rdkit_version

    lines = [
        "# QM7-like molecules for mlipilot: NOT the QM7 data set (which cannot be downloaded at",
        "# run time) but a list made in its spirit: neutral closed-shell molecules with 1-7 heavy",
        "# atoms of C, N, O, S (hydrogens implicit), GDB-13-style stability filters.",
        f"# Made by `python -m mlipilot.data.molecules.generate_list --count {count} "
        f"--seed {seed}`",
        f"# with RDKit {rdkit_version}: seeded random growth of heavy-atom graphs, deduplicated",
        "# by canonical SMILES, in generation order (the first N rows are a mix of sizes).",
        "id,smiles,heavy_atoms",
    ]
    for i, smi in enumerate(smiles, start=1):
        n_heavy = Chem.MolFromSmiles(smi).GetNumHeavyAtoms()
        lines.append(f"m{i:04d},{smi},{n_heavy}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    sys.stdout.write(render_csv(generate(args.count, args.seed), count=args.count, seed=args.seed))


if __name__ == "__main__":
    main()
