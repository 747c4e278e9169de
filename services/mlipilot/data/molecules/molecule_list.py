"""Read and validate a molecule list (``id,smiles,heavy_atoms`` CSV with ``#`` comments).

Every problem names the file, the line and the offending value, so a user editing the list
can fix it without reading code.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from ase.io.extxyz import key_val_str_to_dict
from rdkit import Chem, RDLogger

from mlipilot.errors import MlipilotError

SHIPPED_LIST = Path(__file__).with_name("qm7_molecules.csv")
ALLOWED_HEAVY = frozenset({"C", "N", "O", "S"})
MAX_HEAVY_ATOMS = 7
_HEADER = ["id", "smiles", "heavy_atoms"]
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")  # ids become file names: keep them plain


@dataclass(frozen=True)
class Molecule:
    mol_id: str
    smiles: str
    heavy_atoms: int


class MoleculeListError(MlipilotError):
    """A molecule list file is missing or has an invalid row."""


def load_molecule_list(path: Path = SHIPPED_LIST) -> list[Molecule]:
    RDLogger.DisableLog("rdApp.*")  # our own message names the line; RDKit's would be noise
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MoleculeListError(f"{path}: cannot read the molecule list: {exc}") from exc
    rows = [
        (n, line)
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not rows or next(csv.reader([rows[0][1]])) != _HEADER:
        got = rows[0][1] if rows else "nothing"
        raise MoleculeListError(
            f"{path}: the first non-comment line must be the header "
            f"{','.join(_HEADER)!r}, got {got!r}"
        )
    molecules: list[Molecule] = []
    seen_ids: dict[str, int] = {}
    seen_smiles: dict[str, int] = {}
    for lineno, line in rows[1:]:
        where = f"{path}:{lineno}"
        mol = _parse_row(where, line)
        for key, seen, what in ((mol.mol_id, seen_ids, "id"), (mol.smiles, seen_smiles, "SMILES")):
            if key in seen:
                raise MoleculeListError(
                    f"{where}: duplicate {what} {key!r} (first on line {seen[key]})"
                )
            seen[key] = lineno
        molecules.append(mol)
    if not molecules:
        raise MoleculeListError(f"{path}: no molecules after the header")
    return molecules


def _parse_row(where: str, line: str) -> Molecule:
    fields = next(csv.reader([line]))
    if len(fields) != len(_HEADER):
        raise MoleculeListError(
            f"{where}: expected 3 fields (id,smiles,heavy_atoms), got {len(fields)}: {line!r}"
        )
    mol_id, smiles, heavy = (f.strip() for f in fields)
    if not _ID.match(mol_id) or not _survives_extxyz(mol_id):
        raise MoleculeListError(
            f"{where}: id {mol_id!r} must be 1-32 letters, digits or underscores, starting "
            "with a letter, and not T/F/True/False (extxyz would read it back as a bool)"
        )
    rd = Chem.MolFromSmiles(smiles)
    if rd is None:
        raise MoleculeListError(f"{where}: invalid SMILES {smiles!r} (RDKit cannot parse it)")
    elements = {a.GetSymbol() for a in rd.GetAtoms()} - {"H"}
    if not elements <= ALLOWED_HEAVY:
        bad = ", ".join(sorted(elements - ALLOWED_HEAVY))
        raise MoleculeListError(
            f"{where}: SMILES {smiles!r} has element(s) {bad}; allowed: C, N, O, S (and H)"
        )
    if any(a.GetFormalCharge() or a.GetNumRadicalElectrons() for a in rd.GetAtoms()):
        raise MoleculeListError(
            f"{where}: SMILES {smiles!r} is charged or a radical; labels assume neutral "
            "closed-shell molecules"
        )
    n_heavy = rd.GetNumHeavyAtoms()
    if n_heavy > MAX_HEAVY_ATOMS:
        raise MoleculeListError(
            f"{where}: SMILES {smiles!r} has {n_heavy} heavy atoms; at most {MAX_HEAVY_ATOMS}"
        )
    if heavy != str(n_heavy):
        raise MoleculeListError(
            f"{where}: heavy_atoms is {heavy!r} but SMILES {smiles!r} has {n_heavy}"
        )
    if not _survives_extxyz(smiles):
        raise MoleculeListError(f"{where}: SMILES {smiles!r} cannot be stored in extxyz info")
    return Molecule(mol_id=mol_id, smiles=smiles, heavy_atoms=n_heavy)


def _survives_extxyz(value: str) -> bool:
    """True when ASE reads ``key=value`` back as this same string (not a number or bool):
    splits and resume match frames to molecules through these strings."""
    return key_val_str_to_dict(f"k={value}").get("k") == value
