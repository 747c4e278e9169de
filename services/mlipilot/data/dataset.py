"""A data set on disk: split files plus a manifest that pins their content by sha256.

Results cite the manifest hashes, so a score is never silently computed on changed data:
opening a data set re-hashes every split and refuses files that no longer match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from mlipilot.atomic_files import write_text_atomically
from mlipilot.data.extxyz import STRESS_KEY, load_extxyz
from mlipilot.errors import MlipilotError, format_validation_error

MANIFEST_NAME = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitInfo(_Strict):
    file: str  # name relative to the data set root
    sha256: str
    n_frames: int
    n_atoms_total: int
    config_types: dict[str, int]
    label_method: str

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        # A bare name keeps the data set relocatable and stops it pointing outside its root.
        if not v or Path(v).name != v or v in (".", ".."):
            raise ValueError(f"must be a file name inside the data set directory, got {v!r}")
        return v


class DatasetManifest(_Strict):
    name: str
    generator: str
    seed: int
    params: dict[str, Any]
    splits: dict[str, SplitInfo]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(root: Path, manifest: DatasetManifest) -> Path:
    """Write ``root/manifest.json`` atomically and deterministically (sorted keys, no times)."""
    path = Path(root) / MANIFEST_NAME
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    write_text_atomically(path, text)
    return path


@dataclass(frozen=True)
class SplitContents:
    atomic_numbers: list[int]  # the elements, sorted: what a model trained on it can embed
    has_stress: bool  # every frame carries a stress label (what loss=stress needs)


@dataclass(frozen=True)
class Dataset:
    root: Path
    manifest: DatasetManifest

    def _split(self, split: str) -> SplitInfo:
        try:
            return self.manifest.splits[split]
        except KeyError:
            known = ", ".join(sorted(self.manifest.splits))
            raise MlipilotError(
                f"{self.root / MANIFEST_NAME}: no split {split!r} (splits: {known})"
            ) from None

    def path(self, split: str) -> Path:
        return self.root / self._split(split).file

    def hash(self, split: str) -> str:
        return self._split(split).sha256

    def n_frames(self, split: str) -> int:
        return self._split(split).n_frames

    def contents(self, split: str) -> SplitContents:
        """What trainers and agents need to know of ``split``, from one read of it."""
        frames = self.load(split)
        return SplitContents(
            atomic_numbers=sorted({int(z) for atoms in frames for z in atoms.numbers}),
            has_stress=all(STRESS_KEY in atoms.info for atoms in frames),
        )

    def atomic_numbers(self, split: str) -> list[int]:
        """The elements in ``split``, sorted: what a model trained on it can embed."""
        return self.contents(split).atomic_numbers

    def has_stress(self, split: str) -> bool:
        """Whether every frame of ``split`` carries a stress label (what loss=stress needs)."""
        return self.contents(split).has_stress

    def load(self, split: str, *, require_stress: bool = False) -> list[Atoms]:
        """Frames of ``split``, re-checked against the manifest hash and validated."""
        _verify_split(self.root, split, self._split(split))
        return load_extxyz(self.path(split), require_stress=require_stress)


def read_manifest(root: Path) -> DatasetManifest:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise MlipilotError(f"{path}: manifest not found; is {root} a data set directory?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MlipilotError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise MlipilotError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    try:
        return DatasetManifest.model_validate(raw)
    except ValidationError as exc:
        raise MlipilotError(format_validation_error(exc, str(path))) from exc


def open_dataset(root: Path) -> Dataset:
    """Open a data set directory, checking every split file against its manifest hash."""
    root = Path(root)
    manifest = read_manifest(root)
    for split, info in manifest.splits.items():
        _verify_split(root, split, info)
    return Dataset(root=root, manifest=manifest)


def _verify_split(root: Path, split: str, info: SplitInfo) -> None:
    path = root / info.file
    if not path.is_file():
        raise MlipilotError(f"{root / MANIFEST_NAME}: split {split!r}: file {path} is missing")
    actual = file_sha256(path)
    if actual != info.sha256:
        raise MlipilotError(
            f"{root / MANIFEST_NAME}: split {split!r}: file {path} has sha256 {actual}, "
            f"expected {info.sha256}: the data changed after the manifest was written "
            "(regenerate the data set or restore the file)"
        )


def ensure_cu_emt(
    root: Path,
    *,
    seed: int,
    n_train: int,
    n_test: int,
    supercell: int = 2,
    extra_train: dict[str, int] | None = None,
) -> Dataset:
    """Open the Cu EMT data set at ``root``, generating it if absent; never overwrite.

    An existing manifest with a different seed, generator or params is an error: the caller
    asked for other data than what is there, and silently replacing it would change results
    that already cite its hashes.
    """
    # Imported here: cu_emt builds a DatasetManifest, so a top-level import would be circular.
    from mlipilot.data.cu_emt import GENERATOR, cu_emt_params, generate_cu_emt

    root = Path(root)
    if not (root / MANIFEST_NAME).exists():
        generate_cu_emt(
            root,
            seed=seed,
            n_train=n_train,
            n_test=n_test,
            supercell=supercell,
            extra_train=extra_train,
        )
        return open_dataset(root)

    existing = read_manifest(root)
    wanted: dict[str, Any] = {
        "generator": GENERATOR,
        "seed": seed,
        **cu_emt_params(
            n_train=n_train, n_test=n_test, supercell=supercell, extra_train=extra_train
        ),
    }
    have: dict[str, Any] = {
        "generator": existing.generator,
        "seed": existing.seed,
        **existing.params,
    }
    diffs = [
        f"{k}: on disk {have.get(k)!r}, asked {wanted.get(k)!r}"
        for k in sorted(set(wanted) | set(have))
        if have.get(k) != wanted.get(k)
    ]
    if diffs:
        raise MlipilotError(
            f"{root / MANIFEST_NAME}: existing data set was made with different settings "
            f"({'; '.join(diffs)}); refusing to overwrite it: use another directory or "
            "remove this one"
        )
    return open_dataset(root)
