"""Finished work on disk, one small file per item, so a killed job never redoes it.

Labels: ``labels/<level>/<config_id>.<key>.xyz`` (one labelled frame). Failures:
``<config_id>.<key>.failed.json`` beside them, with the reason. Sampled configurations:
``configs/<mol_id>.<key>.xyz``. The key hashes everything the content depends on (atoms and
rounded positions plus the level's settings and backend version; for configurations the
SMILES, seed and sampling settings), so changed inputs never pick up a stale file.
Every write goes to a temporary name first and is renamed into place: a file that exists
is whole.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from mlipilot.atomic_files import replaced_atomically, write_text_atomically
from mlipilot.data.extxyz import ENERGY_KEY, FORCES_KEY, write_extxyz
from mlipilot.data.molecules.levels import Level, level_slug


@dataclass(frozen=True)
class Failure:
    config_id: str
    mol_id: str
    stage: str  # "sampling" or "label"
    kind: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


class ConfigStore:
    """Sampled (unlabelled) configurations, one file per molecule."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "configs"

    def path(self, mol_id: str, key: str) -> Path:
        return self.dir / f"{mol_id}.{key}.xyz"

    def load(self, mol_id: str, key: str) -> list[Atoms] | None:
        path = self.path(mol_id, key)
        return ase.io.read(path, index=":", format="extxyz") if path.is_file() else None

    def save(self, mol_id: str, key: str, frames: list[Atoms]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(self.path(mol_id, key)) as tmp:
            ase.io.write(tmp, frames, format="extxyz")


class LabelStore:
    """Labels and label failures of one level."""

    def __init__(self, root: Path, level: Level) -> None:
        self.level = level
        self.dir = Path(root) / "labels" / level_slug(level)

    def key(self, atoms: Atoms) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
        # Positions as written to extxyz (8 decimals): a configuration read back from disk
        # and one fresh from sampling may differ in the last bit but must share their key.
        h.update(" ".join(f"{v:.8f}" for v in atoms.positions.ravel()).encode())
        h.update(self.level.token.encode())
        return h.hexdigest()[:16]

    def _stem(self, atoms: Atoms) -> str:
        return f"{atoms.info['config_id']}.{self.key(atoms)}"

    def load_label(self, atoms: Atoms) -> Atoms | None:
        path = self.dir / f"{self._stem(atoms)}.xyz"
        return ase.io.read(path, index=0, format="extxyz") if path.is_file() else None

    def load_failure(self, atoms: Atoms) -> Failure | None:
        path = self.dir / f"{self._stem(atoms)}.failed.json"
        return Failure(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None

    def save_label(self, atoms: Atoms, energy: float, forces: np.ndarray) -> Atoms:
        self.dir.mkdir(parents=True, exist_ok=True)
        frame = labelled_frame(atoms, energy, forces, self.level)
        write_extxyz(self.dir / f"{self._stem(atoms)}.xyz", [frame])
        return frame

    def save_failure(self, atoms: Atoms, kind: str, reason: str) -> Failure:
        self.dir.mkdir(parents=True, exist_ok=True)
        failure = Failure(
            config_id=atoms.info["config_id"],
            mol_id=atoms.info["mol_id"],
            stage="label",
            kind=kind,
            reason=reason,
        )
        text = json.dumps(failure.as_dict(), indent=2, sort_keys=True) + "\n"
        write_text_atomically(self.dir / f"{self._stem(atoms)}.failed.json", text)
        return failure


def labelled_frame(atoms: Atoms, energy: float, forces: np.ndarray, level: Level) -> Atoms:
    """A fresh Atoms (no cell, no pbc) with labels under REF_* and the level in its info."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    out.info = {
        **{k: atoms.info[k] for k in ("mol_id", "config_id", "smiles", "config_type")},
        "level": level.name,
        "label_method": level.description,
        ENERGY_KEY: float(energy),
    }
    out.arrays[FORCES_KEY] = np.asarray(forces, dtype=float)
    return out
