"""load_extxyz names the file, frame and key of every problem; write_extxyz is deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from mlipilot.data.extxyz import (
    ENERGY_KEY,
    FORCES_KEY,
    STRESS_KEY,
    ExtxyzError,
    load_extxyz,
    write_extxyz,
)
from mlipilot.errors import MlipilotError

LATTICE = 'Lattice="3.6 0.0 0.0 0.0 3.6 0.0 0.0 0.0 3.6" pbc="T T T"'
PROPS = "Properties=species:S:1:pos:R:3:REF_forces:R:3"
ROWS = ("Cu 0.0 0.0 0.0 0.1 0.2 0.3", "Cu 1.8 1.8 0.0 -0.1 -0.2 -0.3")
STRESS = 'REF_stress="0.1 0.1 0.1 0.0 0.0 0.0"'


def frame(
    rows: tuple[str, ...] = ROWS,
    props: str = PROPS,
    info: str = f"REF_energy=-1.5 {STRESS}",
    lattice: str = LATTICE,
) -> str:
    return f"{len(rows)}\n{lattice} {props} {info}\n" + "".join(r + "\n" for r in rows)


def write(tmp_path: Path, *frames: str, name: str = "bad.xyz") -> Path:
    path = tmp_path / name
    path.write_text("".join(frames))
    return path


def error_for(path: Path, **kwargs: bool) -> str:
    with pytest.raises(ExtxyzError) as info:
        load_extxyz(path, **kwargs)
    assert isinstance(info.value, MlipilotError)
    msg = str(info.value)
    assert str(path) in msg
    return msg


def test_valid_file_loads(tmp_path: Path) -> None:
    frames = load_extxyz(write(tmp_path, frame(), frame(), name="ok.xyz"), require_stress=True)
    assert len(frames) == 2
    assert frames[0].info[ENERGY_KEY] == -1.5
    assert frames[1].arrays[FORCES_KEY].shape == (2, 3)
    assert frames[0].info[STRESS_KEY].shape == (6,)


def test_missing_forces_in_frame_2(tmp_path: Path) -> None:
    no_forces = frame(
        rows=("Cu 0.0 0.0 0.0", "Cu 1.8 1.8 0.0"), props="Properties=species:S:1:pos:R:3"
    )
    msg = error_for(write(tmp_path, frame(), frame(), no_forces))
    assert "frame 2" in msg
    assert "'REF_forces'" in msg
    assert "REF_energy" in msg  # the keys that ARE present are listed


def test_missing_energy(tmp_path: Path) -> None:
    msg = error_for(write(tmp_path, frame(), frame(info="config_type=rattled")))
    assert "frame 1" in msg
    assert "'REF_energy'" in msg
    assert "config_type" in msg


def test_plain_energy_forces_keys(tmp_path: Path) -> None:
    plain = frame(props="Properties=species:S:1:pos:R:3:forces:R:3", info="energy=-1.5")
    msg = error_for(write(tmp_path, plain))
    assert "frame 0" in msg
    assert "'REF_energy'" in msg
    assert "found 'energy'" in msg


def test_plain_forces_key_only(tmp_path: Path) -> None:
    plain = frame(props="Properties=species:S:1:pos:R:3:forces:R:3")
    msg = error_for(write(tmp_path, plain))
    assert "'REF_forces'" in msg
    assert "found 'forces'" in msg


def test_nan_in_forces_frame_1(tmp_path: Path) -> None:
    nan_rows = ("Cu 0.0 0.0 0.0 0.1 nan 0.3", ROWS[1])
    msg = error_for(write(tmp_path, frame(), frame(rows=nan_rows), frame()))
    assert "frame 1" in msg
    assert "REF_forces" in msg
    assert "non-finite" in msg


def test_forces_with_two_columns(tmp_path: Path) -> None:
    two = frame(
        rows=("Cu 0.0 0.0 0.0 0.1 0.2", "Cu 1.8 1.8 0.0 0.1 0.2"),
        props="Properties=species:S:1:pos:R:3:REF_forces:R:2",
    )
    msg = error_for(write(tmp_path, two))
    assert "frame 0" in msg
    assert "REF_forces" in msg
    assert "expected (2, 3)" in msg
    assert "(2, 2)" in msg


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"info": "REF_energy=nan"}, "REF_energy: non-finite"),
        ({"info": "REF_energy=inf"}, "REF_energy: non-finite"),
        ({"info": "REF_energy=abc"}, "REF_energy must be one number"),
        ({"rows": ("Cu 0.0 inf 0.0 0.1 0.2 0.3",)}, "positions: non-finite"),
        ({"lattice": 'Lattice="nan 0 0 0 3.6 0 0 0 3.6" pbc="T T T"'}, "cell"),
        ({"info": 'REF_energy=-1.5 REF_stress="0.1 nan 0.1 0 0 0"'}, "REF_stress: non-finite"),
        ({"info": 'REF_energy=-1.5 REF_stress="0.1 0.1 0.1"'}, "REF_stress has wrong shape"),
        ({"rows": (), "props": "Properties=species:S:1:pos:R:3"}, "zero atoms"),
    ],
)
def test_invalid_values(tmp_path: Path, kwargs: dict[str, object], needle: str) -> None:
    msg = error_for(write(tmp_path, frame(), frame(**kwargs)))  # type: ignore[arg-type]
    assert "frame 1" in msg
    assert needle in msg


def test_stress_required(tmp_path: Path) -> None:
    path = write(tmp_path, frame(info="REF_energy=-1.5"))
    assert len(load_extxyz(path)) == 1
    msg = error_for(path, require_stress=True)
    assert "frame 0" in msg
    assert "'REF_stress'" in msg


def test_empty_file(tmp_path: Path) -> None:
    msg = error_for(write(tmp_path, ""))
    assert "empty" in msg


def test_missing_file(tmp_path: Path) -> None:
    msg = error_for(tmp_path / "nope.xyz")
    assert "not found" in msg


def test_garbage_text(tmp_path: Path) -> None:
    msg = error_for(write(tmp_path, "this is not\nan xyz file\n"))
    assert "cannot parse" in msg
    assert "frame 0" in msg


def test_unparsable_number_names_frame(tmp_path: Path) -> None:
    bad = frame(rows=("Cu 0.0 0.0 zero 0.1 0.2 0.3", ROWS[1]))
    msg = error_for(write(tmp_path, frame(), frame(), bad))
    assert "cannot parse" in msg
    assert "frame 2" in msg


def test_truncated_frame(tmp_path: Path) -> None:
    truncated = frame().rsplit("Cu", 1)[0]  # header says 2 atoms, one line follows
    msg = error_for(write(tmp_path, frame(), truncated))
    assert "frame 1" in msg
    assert "2 atoms" in msg


def test_content_after_blank_line(tmp_path: Path) -> None:
    msg = error_for(write(tmp_path, frame(), "\n", frame()))
    assert "frame 1" in msg
    assert "blank line" in msg


def _frames() -> list[Atoms]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        a = Atoms("Cu2", positions=rng.normal(size=(2, 3)), cell=[3.6] * 3, pbc=True)
        a.info = {"config_type": "x", ENERGY_KEY: -1.0 - i, STRESS_KEY: rng.normal(size=6)}
        a.arrays[FORCES_KEY] = rng.normal(size=(2, 3))
        out.append(a)
    return out


def test_write_is_deterministic_and_atomic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.xyz", tmp_path / "b.xyz"
    write_extxyz(a, _frames())
    write_extxyz(b, _frames())
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.xyz", "b.xyz"]  # no temp left
    back = load_extxyz(a, require_stress=True)
    np.testing.assert_allclose(
        back[2].arrays[FORCES_KEY], _frames()[2].arrays[FORCES_KEY], atol=1e-8
    )
    assert back[1].info[ENERGY_KEY] == -2.0


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "a.xyz"
    write_extxyz(path, _frames())
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - any failure will do
        write_extxyz(path, [_frames()[0], "not atoms"])  # type: ignore[list-item]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.xyz"]
