"""Fuzzed extended-XYZ files: loaded and checked, or refused naming the file; writes are atomic.

Training and test sets are user files (and the scorecard service loads whatever a URI points
at), so ``load_extxyz`` gets random bytes and valid files damaged the ways files get damaged:
truncated, bytes flipped, numbers replaced by nan/inf/garbage, columns dropped or added, atom
counts and ``Properties`` changed, stray lines and odd whitespace inserted. It must return
frames that pass its own checks (finite positions, one finite energy, (n, 3) finite forces), or
raise ``ExtxyzError`` (a ``MlipilotError``) naming the file; nothing else may escape.
``write_extxyz`` must never leave half a file: when writing fails midway the target is absent
or holds its previous complete content, and no temporary file is left behind.
"""

from __future__ import annotations

import io
import itertools
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from mlipilot.data.cu_emt import _labelled
from mlipilot.data.extxyz import (
    ENERGY_KEY,
    FORCES_KEY,
    STRESS_KEY,
    ExtxyzError,
    load_extxyz,
    write_extxyz,
)
from mlipilot.errors import MlipilotError


def _frames(seed: int) -> list[Atoms]:
    """Two tiny frames labelled by EMT the way the project's generator labels them."""
    cubic = bulk("Cu", "fcc", a=3.61, cubic=True)
    cubic.rattle(0.05, seed=seed)
    primitive = bulk("Cu", "fcc", a=3.61 * (1 + 0.01 * seed))
    return [_labelled(cubic, "rattled"), _labelled(primitive, "strained")]


FRAMES_A, FRAMES_B = _frames(1), _frames(2)
_buffer = io.StringIO()
ase.io.write(_buffer, FRAMES_A, format="extxyz", write_results=False)
VALID_TEXT = _buffer.getvalue()

NUMBER = re.compile(r"-?\d+\.?\d*(?:e[-+]?\d+)?")
BAD_NUMBERS = ["nan", "NaN", "inf", "-inf", "1e999", "", "abc", "0x1F", "1,5", "--1", "T", "."]
PROPERTY_EDITS = [
    ("REF_forces:R:3", "REF_forces:R:2"),
    ("REF_forces:R:3", "REF_forces:R:4"),
    ("REF_forces:R:3", "REF_forces:I:3"),
    ("REF_forces:R:3", "REF_forces:S:3"),
    ("REF_forces:R:3", "REF_forces:L:3"),
    ("REF_forces:R:3", "forces:R:3"),
    (":REF_forces:R:3", ""),
    ("pos:R:3", "pos:R:2"),
    ("species:S:1", "species:I:1"),
    ("Properties=", "Props="),
    ("REF_energy=", "energy="),
    ("REF_energy=", "REF_energy=abc REF_x="),
    ("REF_stress=", "stress="),
    ('REF_stress="', 'REF_stress="1 '),
    ("Lattice=", "Lattice_="),
    ('pbc="T T T"', 'pbc="T T"'),
    ('"', ""),
]
ODD_TEXT = [
    "\x0c",
    "\x85",
    "\u2028",
    "\r",
    "\t",
    "\x00",
    '"',
    "=",
    " ",
    "\n",
    "\n\n",
    "VEC1 1 2 3\n",
]


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """VALID_TEXT with one to three kinds of damage, the last maybe at the byte level."""
    text = VALID_TEXT
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(["number", "column", "count", "props", "line", "insert", "dup", "pad"])
        )
        lines = text.split("\n")
        if kind == "number":
            spans = [m.span() for m in NUMBER.finditer(text)]
            if spans:
                lo, hi = draw(st.sampled_from(spans))
                bad = draw(st.sampled_from(BAD_NUMBERS) | st.text(max_size=4))
                text = text[:lo] + bad + text[hi:]
        elif kind == "column":
            atom_lines = [i for i, line in enumerate(lines) if line.startswith("Cu")]
            if not atom_lines:
                continue
            which = draw(st.lists(st.sampled_from(atom_lines), min_size=1, unique=True))
            col = draw(st.integers(0, 7))
            add = draw(st.booleans())
            for i in which:
                cells = lines[i].split()
                if add:
                    cells.insert(min(col, len(cells)), draw(st.sampled_from(["0.0", "x", "nan"])))
                elif col < len(cells):
                    del cells[col]
                lines[i] = " ".join(cells)
            text = "\n".join(lines)
        elif kind == "count":
            heads = [i for i, line in enumerate(lines) if line.strip().isdigit()]
            i = draw(st.sampled_from(heads)) if heads else 0
            lines[i] = str(
                draw(
                    st.integers(-2, 9)
                    | st.sampled_from(["", "x", "2.5", "1e3", "-2", "1000000", "\u0663"])
                )
            )
            text = "\n".join(lines)
        elif kind == "props":
            old, new = draw(st.sampled_from(PROPERTY_EDITS))
            text = text.replace(old, new, draw(st.sampled_from([1, -1])))
        elif kind == "line":
            i = draw(st.integers(0, len(lines)))
            lines.insert(i, draw(st.sampled_from(["", "   ", "VEC1 1 0 0", "1", "Cu 0 0 0"])))
            text = "\n".join(lines)
        elif kind == "insert":
            pos = draw(st.integers(0, len(text)))
            text = text[:pos] + draw(st.sampled_from(ODD_TEXT) | st.text(max_size=3)) + text[pos:]
        elif kind == "pad":  # more than one read buffer (8 KiB) after a blank line
            text = text + "\n" + "# filler\n" * draw(st.integers(1, 1500))
        else:  # duplicate or delete one line
            i = draw(st.integers(0, len(lines) - 1))
            if draw(st.booleans()):
                lines.insert(i, lines[i])
            else:
                del lines[i]
            text = "\n".join(lines)
    raw = text.encode("utf-8", errors="surrogatepass")
    tail = draw(st.sampled_from(["keep", "keep", "truncate", "flip"]))
    if tail == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif tail == "flip" and raw:
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(raw) - 1))
            raw = raw[:pos] + bytes([draw(st.integers(0, 255))]) + raw[pos + 1 :]
    return raw


_names = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzed_xyz")


def _check_frames(frames: list[Atoms]) -> None:
    """What load_extxyz promises about every frame it returns."""
    assert frames
    for atoms in frames:
        n = len(atoms)
        assert n > 0
        assert np.isfinite(atoms.positions).all() and np.isfinite(atoms.cell.array).all()
        energy = atoms.info[ENERGY_KEY]
        assert np.ndim(energy) == 0 and np.isfinite(float(energy))
        forces = np.asarray(atoms.arrays[FORCES_KEY])
        assert forces.shape == (n, 3) and forces.dtype.kind in "iuf"
        assert np.isfinite(forces).all()
        if STRESS_KEY in atoms.info:
            stress = np.asarray(atoms.info[STRESS_KEY])
            assert stress.shape in ((6,), (9,), (3, 3)) and np.isfinite(stress).all()


def _load_or_refuse(raw: bytes, folder: Path) -> list[Atoms] | None:
    path = folder / f"fuzzed-{next(_names)}.xyz"
    path.write_bytes(raw)
    try:
        frames = load_extxyz(path)
    except ExtxyzError as exc:
        assert isinstance(exc, MlipilotError)
        assert str(path) in str(exc), str(exc)
        if "the file is empty" in str(exc):
            text = raw.decode("utf-8", errors="replace")
            assert not text.strip(), "a file with content is called empty"
        event("refused")
        return None
    finally:
        path.unlink()
    event("loaded")
    _check_frames(frames)
    return frames


def test_the_undamaged_file_loads(folder: Path) -> None:
    path = folder / "valid.xyz"
    path.write_text(VALID_TEXT)
    frames = load_extxyz(path, require_stress=True)
    _check_frames(frames)
    assert [len(a) for a in frames] == [4, 1]
    assert frames[0].info[ENERGY_KEY] == FRAMES_A[0].info[ENERGY_KEY]


@settings(max_examples=2000)
@given(raw=damaged())
# ASE keeps a form feed inside a line; str.splitlines did not, and the trailing-content scan
# then read an atom line as the next frame's atom count (ValueError escaped).
@example(raw=VALID_TEXT.replace("config_type=rattled", "config_type=a\x0cb").encode())
@example(raw=VALID_TEXT.replace("config_type=rattled", "config_type=a\u2028b").encode())
@example(raw=VALID_TEXT.replace("REF_energy=0.", "REF_energy=nan", 1).encode())
@example(raw=VALID_TEXT.replace("\n1\n", "\n\n1\n").encode())
@example(raw=b"\n" + VALID_TEXT.encode())  # was called "the file is empty"
# ASE stops at the blank line and never decodes the rest; the scan after it did, and a
# UnicodeDecodeError escaped.
@example(raw=VALID_TEXT.encode() + b"\n" + b"# filler\n" * 1000 + b"\xff\n")
def test_damaged_files_load_clean_or_are_refused(raw: bytes, folder: Path) -> None:
    _load_or_refuse(raw, folder)


@settings(max_examples=1000)
@given(
    raw=st.binary(max_size=400)
    | st.builds(
        lambda n, rest: f"{n}\n".encode() + rest, st.integers(-1, 5), st.binary(max_size=200)
    )
    | st.text(max_size=300).map(lambda t: t.encode("utf-8", errors="surrogatepass"))
)
@example(raw=b"")
@example(raw=b"\n\n")
@example(raw=b"1\n\nCu 0 0 0\n")
@example(raw=b"\xff\xfe\x00")
@example(raw=b"-2\nx\n")  # was read as a frame, then reported as content after a blank line
def test_random_bytes_are_refused_naming_the_file(raw: bytes, folder: Path) -> None:
    _load_or_refuse(raw, folder)


def test_a_huge_atom_count_is_refused_at_once(folder: Path) -> None:
    """ASE reads every promised atom line, even past the end: 10^7 took 13 s, 10^9 minutes."""
    path = folder / "huge-count.xyz"
    path.write_text("10000000\ncomment\nCu 0 0 0\n")
    start = time.monotonic()
    with pytest.raises(ExtxyzError, match="header says 10000000 atoms but the file ends"):
        load_extxyz(path)
    assert time.monotonic() - start < 5.0


def test_missing_file_and_folder_are_refused(folder: Path) -> None:
    for path in (folder / "absent.xyz", folder):
        with pytest.raises(ExtxyzError, match=re.escape(str(path))):
            load_extxyz(path)


# --- atomic writes -------------------------------------------------------------------------

_real_write = ase.io.write


def _failing_write(cut: float, error: Exception) -> Callable[..., None]:
    """ase.io.write that writes the first ``cut`` of its real output, then raises ``error``."""

    def write(fh, images, **kwargs) -> None:
        buffer = io.StringIO()
        _real_write(buffer, images, **kwargs)
        text = buffer.getvalue()
        fh.write(text[: int(len(text) * cut)])
        fh.flush()
        raise error

    return write


ERRORS = st.sampled_from(
    [OSError(28, "No space left on device"), ValueError("bad frame"), RuntimeError("boom")]
)


@settings(max_examples=100)
@given(
    previous=st.booleans(),
    cut=st.floats(0, 1),
    error=ERRORS,
    stage=st.sampled_from(["write", "replace"]),
)
def test_a_failed_write_leaves_the_old_file_or_none(
    previous: bool, cut: float, error: Exception, stage: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "train.xyz"
        if previous:
            write_extxyz(target, FRAMES_A)
        before = target.read_bytes() if previous else None
        if stage == "write":
            patch = mock.patch("ase.io.write", _failing_write(cut, error))
        else:
            patch = mock.patch("mlipilot.atomic_files.os.replace", side_effect=error)
        with patch, pytest.raises(type(error)):
            write_extxyz(target, FRAMES_B)
        assert sorted(p.name for p in Path(tmp).iterdir()) == (["train.xyz"] if previous else [])
        if previous:
            assert target.read_bytes() == before  # the old file, whole
            _check_frames(load_extxyz(target))
        # and a later write that succeeds replaces it with the new frames, whole
        write_extxyz(target, FRAMES_B)
        assert [a.info[ENERGY_KEY] for a in load_extxyz(target)] == [
            a.info[ENERGY_KEY] for a in FRAMES_B
        ]
        assert [p.name for p in Path(tmp).iterdir()] == ["train.xyz"]
