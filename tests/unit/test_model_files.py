"""Model files across boundaries: a configuration plus tensors, never a pickle, never too big."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from factories import untrained_mace

from mlipilot.model_files import ModelFileError, read_package, write_mace_file, write_package
from mlipilot.model_files import package as package_module
from mlipilot.model_files.config import MAX_SIZE, config_document, parse_config
from mlipilot.model_files.size import estimated_size

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return untrained_mace([29, 47], [-3.0, -2.5], num_interactions=2, hidden_irreps="8x0e+8x1o")


@pytest.fixture(scope="module")
def package(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_package(model, tmp_path_factory.mktemp("package") / "model-package.pt")


def _energy_forces(model: torch.nn.Module) -> tuple[float, np.ndarray]:
    from mace.calculators import MACECalculator

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    atoms.numbers[0] = 47
    atoms.calc = MACECalculator(models=model, device="cpu", default_dtype="float64")
    return atoms.get_potential_energy(), atoms.get_forces()


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_package_rebuilds_the_same_model(model: torch.nn.Module, package: Path) -> None:
    rebuilt = read_package(package)
    assert type(rebuilt).__name__ == "ScaleShiftMACE"
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, rebuilt.state_dict()[key]), key
    e0, f0 = _energy_forces(model)
    e1, f1 = _energy_forces(rebuilt)
    assert e0 == e1 and np.array_equal(f0, f1)
    # A second read builds nothing new: the architecture's skeleton is copied.
    again = read_package(package)
    assert again is not rebuilt and torch.equal(
        again.state_dict()["scale_shift.scale"], rebuilt.state_dict()["scale_shift.scale"]
    )


def test_users_get_a_mace_file_that_mace_loads(package: Path, tmp_path: Path) -> None:
    from mace.calculators import MACECalculator

    dest = write_mace_file(package, tmp_path / "best.model")
    calc = MACECalculator(model_paths=str(dest), device="cpu", default_dtype="float64")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy())


def test_a_code_running_pickle_is_refused_unrun(model: torch.nn.Module, tmp_path: Path) -> None:
    """The attack on the scorecard service: a pickled 'model' whose unpickling runs code."""
    marker = tmp_path / "marker"
    pickled = tmp_path / "evil.model"
    torch.save({"model": model, "payload": _Payload(marker)}, pickled)
    with pytest.raises(ModelFileError, match="weights_only") as info:
        read_package(pickled)
    assert str(pickled) in str(info.value)
    # Also inside a package's weights, where tensors alone are expected.
    doc = json.dumps(config_document(model), sort_keys=True)
    state = {**model.state_dict(), "extra": _Payload(marker)}
    evil = tmp_path / "evil-package.pt"
    torch.save({"format": package_module.FORMAT, "config": doc, "weights": state}, evil)
    with pytest.raises(ModelFileError, match="weights_only"):
        read_package(evil)
    assert not marker.exists()
    # The payload is real: the unsafe load that the scorer used to do runs it.
    torch.load(pickled, weights_only=False)
    assert marker.read_text() == "pwned"


def test_a_mace_pickle_is_not_a_package(model: torch.nn.Module, tmp_path: Path) -> None:
    """What mace_run_train writes: a whole pickled module, which the scorer never unpickles."""
    torch.save(model, tmp_path / "candidate.model")
    with pytest.raises(ModelFileError, match="weights_only"):
        read_package(tmp_path / "candidate.model")


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "symlink", "missing"])
def test_only_regular_files_are_read(package: Path, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model"
    if kind == "dev_zero":
        path = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block until a writer came
    elif kind == "symlink":
        path.symlink_to(package)
    with pytest.raises(ModelFileError, match=r"regular file|no such file"):
        read_package(path)


def test_a_file_over_the_size_cap_is_refused_unread(package: Path) -> None:
    with pytest.raises(ModelFileError, match="over the 1000 bytes allowed"):
        read_package(package, max_bytes=1000)


def test_compressed_entries_are_refused(package: Path, tmp_path: Path) -> None:
    """A zip bomb: torch writes stored entries only, so a deflated entry is someone else's."""
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelFileError, match="compressed entries"):
        read_package(bomb)
    huge = tmp_path / "huge.pt"
    with zipfile.ZipFile(huge, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        dst.writestr("archive/data/0", b"\0" * (8 << 20))  # 8 MiB that deflate to a few KiB
    assert huge.stat().st_size < 100_000
    with pytest.raises(ModelFileError, match="expands to more than"):
        read_package(huge, max_bytes=1 << 20)


def _doc(model: torch.nn.Module, **changes: object) -> dict:
    doc = config_document(model)
    doc["kwargs"].update(changes)
    return doc


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"num_interactions": 4000}, "kwargs.num_interactions"),
        ({"correlation": 12}, "kwargs.correlation"),
        ({"max_ell": 9}, "kwargs.max_ell"),
        ({"hidden_irreps": "4096x0e"}, "kwargs.hidden_irreps"),
        ({"hidden_irreps": "8x0e+8x7o"}, "kwargs.hidden_irreps"),
        ({"radial_MLP": [64] * 50}, "kwargs.radial_MLP"),
        ({"num_bessel": 100_000}, "kwargs.num_bessel"),
        ({"atomic_numbers": [29, 29]}, "kwargs.atomic_numbers"),
        ({"atomic_energies": [1.0]}, "kwargs.atomic_energies"),
        ({"r_max": 1e9}, "kwargs.r_max"),
        ({"gate": "os.system"}, "kwargs.gate"),
        ({"interaction_cls": "subprocess.Popen"}, "kwargs.interaction_cls"),
        ({"cueq_config": {"enabled": True}}, "kwargs.cueq_config"),
    ],
)
def test_configurations_out_of_range_are_refused_by_key(
    model: torch.nn.Module, changes: dict, key: str
) -> None:
    with pytest.raises(ModelFileError) as info:
        parse_config(_doc(model, **changes), "model.json")
    assert info.value.fields == (key,)
    assert str(info.value).startswith(f"model.json: {key}: ")


def test_a_model_too_big_to_build_is_refused_before_building(
    model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key in range, the combination huge: 118 elements x 512 channels up to l=3."""
    numbers = list(range(1, 119))
    doc = _doc(
        model,
        num_elements=118,
        atomic_numbers=numbers,
        atomic_energies=[0.0] * 118,
        hidden_irreps="512x0e+512x1o+512x2e+512x3o",
        max_ell=3,
        correlation=3,
        num_interactions=4,
    )
    built: list[object] = []
    monkeypatch.setattr(package_module, "build_checked", lambda *a: built.append(a))
    with pytest.raises(ModelFileError, match=f"over {MAX_SIZE:,}") as info:
        parse_config(doc, "model.json")
    assert info.value.fields == ("kwargs",)
    assert built == []


# (elements, hidden irreps, correlation, max_ell, interactions): what mace users train, small.
SHAPES = [
    (1, "8x0e", 3, 3, 2),  # the campaigns' default recipe
    (3, "16x0e+16x1o", 2, 2, 2),
    (2, "8x0e+8x1o+8x2e", 2, 2, 2),
    (5, "32x0e", 3, 2, 3),
    (2, "16x0e", 1, 1, 1),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_the_size_estimate_bounds_the_real_model_closely(shape: tuple) -> None:
    elements, hidden, correlation, max_ell, interactions = shape
    model = untrained_mace(
        list(range(1, elements + 1)),
        [0.0] * elements,
        num_interactions=interactions,
        max_ell=max_ell,
        hidden_irreps=hidden,
        correlation=correlation,
    )
    real = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    estimate = estimated_size(parse_config(config_document(model), "x").kwargs)
    assert real <= estimate <= 4 * real, (real, estimate)


def test_the_package_format_is_checked(model: torch.nn.Module, tmp_path: Path) -> None:
    doc = json.dumps(config_document(model), sort_keys=True)
    for payload, words in [
        ({"format": "other/9", "config": doc, "weights": {}}, "not an mlipilot model package"),
        ([torch.zeros(1)], "not an mlipilot model package"),
        ({"format": package_module.FORMAT, "config": doc}, "exactly format, config"),
        (
            {"format": package_module.FORMAT, "config": doc, "weights": [torch.zeros(1)]},
            "parameter name to tensor",
        ),
    ]:
        path = tmp_path / "p.pt"
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        path.write_bytes(buffer.getvalue())
        with pytest.raises(ModelFileError, match=words):
            read_package(path)
