"""Read, validate and write labelled extended-XYZ files.

Labels live under ``REF_*`` keys rather than ``energy``/``forces``/``stress``: ASE's reader
moves the plain names into a ``SinglePointCalculator`` and MACE warns against them. Every
problem is reported with the file, the 0-based frame and the key so the user can fix it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from mlipilot.atomic_files import replaced_atomically
from mlipilot.errors import MlipilotError

ENERGY_KEY = "REF_energy"  # atoms.info, eV
FORCES_KEY = "REF_forces"  # atoms.arrays, (n_atoms, 3), eV/Å
STRESS_KEY = "REF_stress"  # atoms.info, Voigt 6 vector, eV/Å^3, ASE sign convention

# Stress layouts that MACE's voigt_to_matrix accepts.
_STRESS_SHAPES = ((6,), (9,), (3, 3))
# Plain names ASE turns into calculator results; users often write these by habit.
_PLAIN = {ENERGY_KEY: "energy", FORCES_KEY: "forces", STRESS_KEY: "stress"}


class ExtxyzError(MlipilotError):
    """A labelled extxyz file is missing, unreadable or carries invalid labels."""


def load_extxyz(path: str | Path, *, require_stress: bool = False) -> list[Atoms]:
    """Read every frame of ``path`` and check its labels; raise ExtxyzError on any problem."""
    path = Path(path)
    if not path.exists():
        raise ExtxyzError(f"{path}: file not found")
    if not path.is_file():
        raise ExtxyzError(f"{path}: not a regular file")
    _check_atom_counts(path)
    try:
        frames = ase.io.read(path, index=":", format="extxyz")
    except Exception as exc:  # ASE raises many types (XYZError, ValueError, IndexError...)
        where = _locate_parse_failure(path)
        detail = f"{where[0]}: {where[1]}" if where else f"{type(exc).__name__}: {exc}"
        raise ExtxyzError(f"{path}: cannot parse as extended XYZ: {detail}") from exc
    if not frames:
        _check_no_trailing_content(path, 0)  # a blank first line hides all that follows
        raise ExtxyzError(f"{path}: no frames (the file is empty)")
    _check_no_trailing_content(path, len(frames))
    for i, atoms in enumerate(frames):
        _validate_frame(atoms, f"{path}: frame {i}", require_stress=require_stress)
    return frames


def write_extxyz(path: str | Path, frames: Sequence[Atoms]) -> Path:
    """Write ``frames`` atomically; the same frames always give the same bytes.

    Calculator results are not written: labels must already sit under the REF_* keys,
    otherwise ASE would add them under the plain names the loader rejects.
    """
    path = Path(path)
    with replaced_atomically(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        ase.io.write(fh, list(frames), format="extxyz", write_results=False)
    return path


def _validate_frame(atoms: Atoms, where: str, *, require_stress: bool) -> None:
    n = len(atoms)
    if n == 0:
        raise ExtxyzError(f"{where}: has zero atoms")
    _check_finite(atoms.positions, f"{where}: positions")
    _check_finite(atoms.cell.array, f"{where}: cell (Lattice)")

    if ENERGY_KEY not in atoms.info:
        raise ExtxyzError(_missing(atoms, where, ENERGY_KEY, "energy key", "info"))
    energy = np.asarray(atoms.info[ENERGY_KEY])
    if energy.shape != () or energy.dtype.kind not in "iuf":
        raise ExtxyzError(
            f"{where}: {ENERGY_KEY} must be one number, got {atoms.info[ENERGY_KEY]!r}"
        )
    _check_finite(energy, f"{where}: {ENERGY_KEY}")

    if FORCES_KEY not in atoms.arrays:
        raise ExtxyzError(_missing(atoms, where, FORCES_KEY, "forces key", "arrays"))
    forces = np.asarray(atoms.arrays[FORCES_KEY])
    if forces.shape != (n, 3) or forces.dtype.kind not in "iuf":
        raise ExtxyzError(
            f"{where}: {FORCES_KEY} has wrong shape: expected ({n}, 3), got "
            f"{forces.shape} of dtype {forces.dtype}"
        )
    _check_finite(forces, f"{where}: {FORCES_KEY}")

    if STRESS_KEY in atoms.info:
        stress = np.asarray(atoms.info[STRESS_KEY])
        if stress.shape not in _STRESS_SHAPES or stress.dtype.kind not in "iuf":
            raise ExtxyzError(
                f"{where}: {STRESS_KEY} has wrong shape: expected a Voigt 6 vector (or 9 values "
                f"/ 3x3), got {stress.shape} of dtype {stress.dtype}"
            )
        _check_finite(stress, f"{where}: {STRESS_KEY}")
    elif require_stress:
        raise ExtxyzError(_missing(atoms, where, STRESS_KEY, "stress key", "info"))


def _missing(atoms: Atoms, where: str, key: str, what: str, store: str) -> str:
    """Message for a missing label that names what IS present and any plain-name lookalike."""
    info_keys = sorted(atoms.info)
    array_keys = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
    calc_keys = sorted(atoms.calc.results) if atoms.calc is not None else []
    msg = (
        f"{where}: missing {what} {key!r} (expected in atoms.{store}); "
        f"info keys present: {info_keys}, per-atom keys present: {array_keys}"
    )
    if calc_keys:
        msg += f", calculator results (from plain key names): {calc_keys}"
    plain = _PLAIN[key]
    if plain in calc_keys or plain in atoms.info or plain in atoms.arrays:
        msg += (
            f"; found {plain!r} instead: mlipilot expects the labels under "
            f"{ENERGY_KEY}/{FORCES_KEY}/{STRESS_KEY} (ASE turns plain 'energy'/'forces'/'stress' "
            f"into calculator results), so rename {plain!r} to {key!r}"
        )
    return msg


def _check_finite(values: np.ndarray, what: str) -> None:
    arr = np.asarray(values, dtype=float)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        shown = f" at index {idx}" if idx else ""
        raise ExtxyzError(f"{what}: non-finite value {arr[bad][0]}{shown}")


def _check_no_trailing_content(path: Path, n_frames: int) -> None:
    """ASE stops at the first blank line between frames; refuse to drop what follows silently."""
    # ASE stopped at the blank line, so it never decoded what follows: it may not be UTF-8.
    lines = _read_lines(path, errors="replace")
    pos = 0
    for _ in range(n_frames):  # frames already parsed, so the headers are valid counts
        pos += 2 + int(lines[pos].strip())
        while pos < len(lines) and lines[pos].lstrip().startswith("VEC"):
            pos += 1
    rest = [i for i in range(pos, len(lines)) if lines[i].strip()]
    if rest:
        raise ExtxyzError(
            f"{path}: frame {n_frames}: content at line {rest[0] + 1} follows a blank line; "
            f"ASE stops reading at blank lines, so {len(rest)} non-blank lines would be dropped "
            "(remove the blank line)"
        )


def _check_atom_counts(path: Path) -> None:
    """Refuse a frame header that promises more atom lines than the file has, before ASE reads.

    ASE reads the promised lines one by one, also past the end of the file: a header of
    100000000 took minutes. A negative count would send the frame scans below backwards.
    """
    lines = _read_lines(path, errors="replace")  # ASE reports undecodable bytes itself
    pos, frame = 0, 0
    while pos < len(lines) and lines[pos].strip():
        try:
            natoms = int(lines[pos].strip())
        except ValueError:
            return  # ASE reports it, and _locate_parse_failure says where
        if natoms < 0:
            raise ExtxyzError(
                f"{path}: cannot parse as extended XYZ: frame {frame}: line {pos + 1}: "
                f"the atom count must not be negative, got {natoms}"
            )
        end = pos + 2 + natoms
        if end > len(lines):
            raise ExtxyzError(
                f"{path}: cannot parse as extended XYZ: frame {frame}: line {pos + 1}: header "
                f"says {natoms} atoms but the file ends after {max(len(lines) - pos - 2, 0)} "
                "atom lines"
            )
        while end < len(lines) and lines[end].lstrip().startswith("VEC"):
            end += 1
        pos, frame = end, frame + 1


def _read_lines(path: Path, errors: str = "strict") -> list[str]:
    """The file's lines split as ASE's reader splits them (newlines only).

    ``str.splitlines`` also splits at form feeds, U+0085, U+2028 and the like, which ASE keeps
    inside a line (e.g. in a comment value), so the frame scans below would go out of step.
    """
    with open(path, encoding="utf-8", errors=errors) as fh:
        return fh.readlines()


def _locate_parse_failure(path: Path) -> tuple[str, str] | None:
    """Find the first frame ASE cannot parse, mirroring its frame scan; None if not found.

    Only called after a failed read, so the extra pass costs nothing on good files.
    """
    try:
        lines = _read_lines(path)
    except (OSError, UnicodeDecodeError) as exc:
        return "whole file", f"cannot read as UTF-8 text ({exc})"
    pos, frame = 0, 0
    while pos < len(lines) and lines[pos].strip():
        header = lines[pos].strip()
        try:
            natoms = int(header)
        except ValueError:
            return f"frame {frame}", f"line {pos + 1}: expected an atom count, got {header[:60]!r}"
        end = pos + 2 + natoms
        if end > len(lines):
            return (
                f"frame {frame}",
                f"line {pos + 1}: header says {natoms} atoms but the file ends after "
                f"{max(len(lines) - pos - 2, 0)} atom lines",
            )
        while end < len(lines) and lines[end].lstrip().startswith("VEC"):
            end += 1
        block = "".join(lines[pos:end])
        try:
            ase.io.read(io.StringIO(block), index=0, format="extxyz")
        except Exception as exc:
            return f"frame {frame}", f"line {pos + 1}: {type(exc).__name__}: {exc}"
        pos, frame = end, frame + 1
    return None
