"""The Cu EMT data set: deterministic, correctly labelled, held-out, pinned by its manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT

from mlipilot.data.cu_emt import CONFIG_TYPES, config_type_counts, generate_cu_emt
from mlipilot.data.dataset import (
    DatasetManifest,
    ensure_cu_emt,
    file_sha256,
    open_dataset,
)
from mlipilot.data.extxyz import ENERGY_KEY, FORCES_KEY, STRESS_KEY
from mlipilot.errors import MlipilotError

# 16 train frames is the smallest size with one frame of every config type.
SMALL = {"n_train": 16, "n_test": 8}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cu") / "seed0"
    generate_cu_emt(out, seed=0, **SMALL)
    return out


def _hashes(root: Path) -> dict[str, str]:
    return {s: file_sha256(root / f"{s}.xyz") for s in ("train", "test")}


def test_same_seed_same_bytes_other_seed_differs(root: Path, tmp_path: Path) -> None:
    generate_cu_emt(tmp_path / "again", seed=0, **SMALL)
    generate_cu_emt(tmp_path / "other", seed=1, **SMALL)
    assert _hashes(tmp_path / "again") == _hashes(root)
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (
        root / "manifest.json"
    ).read_bytes()
    other = _hashes(tmp_path / "other")
    assert other["train"] != _hashes(root)["train"]
    assert other["test"] != _hashes(root)["test"]


def test_config_types_and_counts(root: Path) -> None:
    ds = open_dataset(root)
    train = ds.load("train", require_stress=True)
    assert ds.has_stress("train")  # what loss=stress needs
    assert {a.info["config_type"] for a in train} == set(CONFIG_TYPES)
    assert ds.manifest.splits["train"].config_types == config_type_counts(16)
    assert sum(config_type_counts(96).values()) == 96
    assert config_type_counts(96)["rattled"] == 24
    assert config_type_counts(96)["md_900K"] == 6
    # Vacancy frames have one atom fewer; all others are the 2x2x2 supercell.
    for a in train:
        assert len(a) == (31 if a.info["config_type"] == "vacancy" else 32)
        assert a.pbc.all()
        assert a.calc is None


def test_labels_equal_fresh_emt(root: Path) -> None:
    ds = open_dataset(root)
    for split in ("train", "test"):
        for a in ds.load(split, require_stress=True):
            ref_e, ref_f = a.info[ENERGY_KEY], a.arrays[FORCES_KEY].copy()
            ref_s = a.info[STRESS_KEY]
            a.calc = EMT()
            assert a.get_potential_energy() == pytest.approx(ref_e, abs=1e-8)
            np.testing.assert_allclose(a.get_forces(), ref_f, rtol=0, atol=1e-8)
            np.testing.assert_allclose(a.get_stress(), ref_s, rtol=0, atol=1e-10)


def test_test_split_is_held_out(root: Path) -> None:
    ds = open_dataset(root)
    train, test = ds.load("train"), ds.load("test")
    assert {a.info["config_type"] for a in test} >= {"rattled", "strained", "vacancy"}
    for t in test:
        for a in train:
            same = len(a) == len(t) and np.allclose(a.positions, t.positions, atol=1e-6)
            assert not (same and np.allclose(a.cell.array, t.cell.array)), "test frame in train"


def test_manifest_matches_files(root: Path) -> None:
    raw = json.loads((root / "manifest.json").read_text())
    manifest = DatasetManifest.model_validate(raw)
    assert manifest.name == "cu-emt"
    assert manifest.seed == 0
    assert manifest.params["n_train"] == 16
    ds = open_dataset(root)
    for split, info in manifest.splits.items():
        assert info.file == f"{split}.xyz"
        assert info.sha256 == file_sha256(root / info.file) == ds.hash(split)
        frames = ds.load(split)
        assert info.n_frames == len(frames) == SMALL[f"n_{split}"]
        assert info.n_atoms_total == sum(len(a) for a in frames)
        assert info.label_method == "ASE EMT"


def test_open_dataset_detects_modified_file(root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    expected = _hashes(copy)["test"]
    with open(copy / "test.xyz", "a") as fh:
        fh.write("\n")
    with pytest.raises(MlipilotError) as info:
        open_dataset(copy)
    msg = str(info.value)
    for needle in ("'test'", "test.xyz", expected, file_sha256(copy / "test.xyz"), "changed"):
        assert needle in msg


def test_open_dataset_bad_manifest(tmp_path: Path) -> None:
    with pytest.raises(MlipilotError, match="manifest not found"):
        open_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(MlipilotError, match="not valid JSON"):
        open_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text('{"name": "x", "surprise": 1}')
    with pytest.raises(MlipilotError, match="surprise: unknown key"):
        open_dataset(tmp_path)


def test_unknown_split(root: Path) -> None:
    with pytest.raises(MlipilotError, match="no split 'valid'"):
        open_dataset(root).path("valid")


def test_ensure_reuses_and_refuses(root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    ds = ensure_cu_emt(copy, seed=0, **SMALL)
    assert ds.hash("train") == _hashes(root)["train"]
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == before  # not regenerated

    with pytest.raises(MlipilotError) as info:
        ensure_cu_emt(copy, seed=0, n_train=8, n_test=8)
    assert "n_train: on disk 16, asked 8" in str(info.value)
    assert "refusing to overwrite" in str(info.value)
    with pytest.raises(MlipilotError, match="seed: on disk 0, asked 3"):
        ensure_cu_emt(copy, seed=3, **SMALL)
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == before


def test_ensure_generates_when_absent(tmp_path: Path) -> None:
    ds = ensure_cu_emt(tmp_path / "new", seed=2, n_train=4, n_test=4)
    assert ds.manifest.seed == 2
    assert len(ds.load("test")) == 4


def test_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(MlipilotError, match="n_train must be >= 1"):
        generate_cu_emt(tmp_path, n_train=0)


EXTRA = {"hot_md": 3, "wide_strain": 2, "surface": 3, "short_pair": 2, "vacancy_strain": 2}


def test_extra_families_go_to_train_only_after_the_same_base_frames(
    root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "extra"
    manifest = generate_cu_emt(out, seed=0, extra_train=EXTRA, **SMALL)
    base, extended = open_dataset(root), open_dataset(out)
    # The scorecard's held-out split is the very same file; train gains the extra frames
    # after its base frames, which are unchanged.
    assert _hashes(out)["test"] == _hashes(root)["test"]
    base_train = base.load("train")
    train = extended.load("train")
    assert len(train) == 16 + sum(EXTRA.values())
    for a, b in zip(base_train, train[:16], strict=True):
        assert np.array_equal(a.positions, b.positions)
    types = manifest.splits["train"].config_types
    assert {t: types[t] for t in ("md_1800K", "md_2400K", "md_3000K")} == {
        "md_1800K": 1,
        "md_2400K": 1,
        "md_3000K": 1,
    }
    assert types["wide_strain"] == 2 and types["short_pair"] == 2
    assert types["vacancy_strain"] == 2
    assert {t for t in types if t.startswith("surface_")} == {
        "surface_100",
        "surface_110",
        "surface_111",
    }
    assert manifest.params["extra_train"] == EXTRA
    again = generate_cu_emt(tmp_path / "again", seed=0, extra_train=EXTRA, **SMALL)
    assert again.splits == manifest.splits


def test_extra_frames_are_what_they_say(tmp_path: Path) -> None:
    generate_cu_emt(
        tmp_path,
        seed=2,
        extra_train={"surface": 3, "short_pair": 4, "wide_strain": 6, "vacancy_strain": 3},
        **SMALL,
    )
    for a in open_dataset(tmp_path).load("train", require_stress=True):
        ctype = a.info["config_type"]
        d = a.get_all_distances(mic=True)[np.triu_indices(len(a), 1)]
        if ctype == "short_pair":  # one pair pushed to 1.4-2.4 Å (plus a 0.03 Å rattle)
            assert 1.25 < d.min() < 2.5
        elif ctype.startswith("surface_"):  # a slab: vacuum along z, atoms in the middle
            z = a.positions[:, 2]
            assert a.cell[2, 2] - (z.max() - z.min()) > 10.0
        elif ctype == "wide_strain":  # isotropic -12 % to +30 % of 3.61 Å
            assert 0.88 * 7.22 - 1e-6 <= a.cell[0, 0] <= 1.30 * 7.22 + 1e-6
        elif ctype == "vacancy_strain":  # 31 of the 32 atoms, within 3 % of 3.61 Å
            assert len(a) == 31
            assert 0.97 * 7.22 - 1e-6 <= a.cell[0, 0] <= 1.03 * 7.22 + 1e-6
        # The stored labels are EMT's for the stored geometry, whatever the family.
        ref = a.copy()
        ref.calc = EMT()
        assert ref.get_potential_energy() == pytest.approx(a.info[ENERGY_KEY], abs=1e-8)


def test_extra_families_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(MlipilotError, match="extra_train: unknown family 'melt'"):
        generate_cu_emt(tmp_path, extra_train={"melt": 4}, **SMALL)
    with pytest.raises(MlipilotError, match=r"extra_train\.surface must be >= 0"):
        generate_cu_emt(tmp_path, extra_train={"surface": -1}, **SMALL)


def test_ensure_refuses_other_extra_families(tmp_path: Path) -> None:
    ensure_cu_emt(tmp_path, seed=0, extra_train={"surface": 3}, **SMALL)
    ensure_cu_emt(tmp_path, seed=0, extra_train={"surface": 3, "hot_md": 0}, **SMALL)  # same data
    with pytest.raises(MlipilotError, match="extra_train"):
        ensure_cu_emt(tmp_path, seed=0, extra_train={"surface": 6}, **SMALL)
    with pytest.raises(MlipilotError, match="extra_train"):
        ensure_cu_emt(tmp_path, seed=0, **SMALL)
