"""Data sets shipped inside the package, so a campaign at an expensive level needs no quantum
chemistry at run time.

``shipped/<name>/`` holds a data set as ``mlipilot data qm7`` wrote it, its splits gzipped:
``manifest.json`` (hashes of the uncompressed splits), ``failures.json`` and
``<split>.xyz.gz``. When a campaign (or ``mlipilot data qm7``) asks for exactly the settings a
shipped set was made with, it is unpacked into the requested folder instead of being computed;
``open_dataset`` then checks every split against the manifest's hashes as usual.

"Exactly" leaves out what only names the software that computed the labels (the level's
version-keyed token and its description): the shipped labels are what they are, and the
manifest keeps saying which PySCF made them. ``--rebuild`` computes them afresh.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

from mlipilot.atomic_files import replaced_atomically
from mlipilot.data.dataset import MANIFEST_NAME, DatasetManifest, read_manifest

SHIPPED_DIR = Path(__file__).parent / "shipped"
# Manifest parameters that name the labelling software's version, not the data's settings.
VERSION_KEYS = frozenset({"level_token", "level_description"})
IGNORED_KEYS = VERSION_KEYS | {"failures_file", "n_failures"}  # what a build records after


def settings(generator: str, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """What must match for a shipped data set to stand in for a build."""
    return {
        "generator": generator,
        "seed": seed,
        **{k: v for k, v in params.items() if k not in IGNORED_KEYS},
    }


def find_shipped(
    generator: str, seed: int, params: dict[str, Any], root: Path | None = None
) -> Path | None:
    """The shipped data set (in ``root``, default ``SHIPPED_DIR``) made with these settings."""
    wanted = settings(generator, seed, params)
    root = SHIPPED_DIR if root is None else root
    for folder in sorted(p for p in root.glob("*") if (p / MANIFEST_NAME).is_file()):
        manifest = read_manifest(folder)
        if settings(manifest.generator, manifest.seed, manifest.params) == wanted:
            return folder
    return None


def unpack(shipped: Path, out: Path) -> DatasetManifest:
    """The shipped data set's files written to ``out``, manifest last (a manifest on disk
    means the split files are whole)."""
    manifest = read_manifest(shipped)
    out.mkdir(parents=True, exist_ok=True)
    for info in manifest.splits.values():
        with (
            gzip.open(shipped / f"{info.file}.gz", "rb") as src,
            replaced_atomically(out / info.file) as tmp,
            open(tmp, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
    for name in sorted(p.name for p in shipped.iterdir()):
        if name != MANIFEST_NAME and not name.endswith(".gz"):
            shutil.copyfile(shipped / name, out / name)
    shutil.copyfile(shipped / MANIFEST_NAME, out / MANIFEST_NAME)
    return manifest


def pack(built: Path, dest: Path) -> None:
    """A built data set (``mlipilot data qm7 --out built``) as a shipped one in ``dest``:
    deterministic gzip (no name, no time), so packing twice gives the same bytes."""
    manifest = read_manifest(built)
    dest.mkdir(parents=True, exist_ok=True)
    for info in manifest.splits.values():
        with (
            open(built / info.file, "rb") as src,
            open(dest / f"{info.file}.gz", "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as dst,
        ):
            shutil.copyfileobj(src, dst)
    for name in (MANIFEST_NAME, str(manifest.params.get("failures_file", "failures.json"))):
        if (built / name).is_file():
            shutil.copyfile(built / name, dest / name)
