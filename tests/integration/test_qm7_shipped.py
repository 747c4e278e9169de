"""A shipped data set stands in for a build with exactly its settings, and for nothing else.

Built for real at the quick level (GFN2-xTB, seconds), packed as the repository ships the
B3LYP set, then asked for again: unpacked with no label computed, byte for byte the build.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mlipilot.data.dataset import MANIFEST_NAME
from mlipilot.data.molecules import shipped
from mlipilot.data.molecules.qm7 import ensure_qm7

SETTINGS = {"molecules": 3, "level": "quick", "configs_per_molecule": 2, "seed": 5}


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a build, the same packed into a shipped folder of its own)."""
    root = tmp_path_factory.mktemp("shipped")
    built = root / "built"
    ensure_qm7(built, **SETTINGS, use_shipped=False)
    shipped.pack(built, root / "ships" / "qm7-tiny")
    return built, root / "ships"


def test_packing_is_deterministic_and_compresses(packed: tuple[Path, Path], tmp_path: Path) -> None:
    built, ships = packed
    shipped.pack(built, tmp_path / "again")
    for split in ("train", "test"):
        once = (ships / "qm7-tiny" / f"{split}.xyz.gz").read_bytes()
        assert once == (tmp_path / "again" / f"{split}.xyz.gz").read_bytes()
        assert len(once) < (built / f"{split}.xyz").stat().st_size / 2


def test_matching_settings_unpack_without_computing_a_label(
    packed: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built, ships = packed
    monkeypatch.setattr(shipped, "SHIPPED_DIR", ships)
    result = ensure_qm7(tmp_path / "out", **SETTINGS)
    assert result.stats.labels_computed == 0 and result.stats.labels_reused == 0
    assert not (tmp_path / "out" / "labels").exists()  # nothing labelled, nothing sampled
    for name in ("train.xyz", "test.xyz", MANIFEST_NAME, "failures.json"):
        assert (tmp_path / "out" / name).read_bytes() == (built / name).read_bytes()
    # Opened again, it is the same data set (and still nothing is computed).
    again = ensure_qm7(tmp_path / "out", **SETTINGS)
    assert again.dataset.hash("train") == result.dataset.hash("train")


def test_other_settings_or_rebuild_compute_their_own(
    packed: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ships = packed
    monkeypatch.setattr(shipped, "SHIPPED_DIR", ships)
    other = ensure_qm7(tmp_path / "seed6", **{**SETTINGS, "seed": 6})
    assert other.stats.labels_computed > 0
    rebuilt = ensure_qm7(tmp_path / "rebuilt", **SETTINGS, use_shipped=False)
    assert rebuilt.stats.labels_computed > 0


def test_a_set_labelled_by_another_version_still_matches(
    packed: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What names the labelling software's version does not decide a match: the shipped labels
    are used as they are, and the unpacked manifest keeps saying who made them."""
    _, ships = packed
    copy = tmp_path / "ships" / "qm7-tiny"
    copy.parent.mkdir()
    shutil.copytree(ships / "qm7-tiny", copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["params"]["level_token"] = "0000000000000000"
    manifest["params"]["level_description"] = "quick: GFN2-xTB (tblite 0.0-old)"
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", copy.parent)
    result = ensure_qm7(tmp_path / "out", **SETTINGS)
    assert result.stats.labels_computed == 0
    assert result.dataset.manifest.params["level_description"].endswith("0.0-old)")
