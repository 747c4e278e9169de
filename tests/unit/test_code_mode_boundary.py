"""The code-mode model boundary: a candidate's model comes back as model.json + weights.pt and
is rebuilt from allow-listed names only; pickled objects are refused without running them."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from ase.build import bulk
from mace import data
from mace.tools import torch_geometric, utils

from mlipilot.code_mode.model_boundary import (
    MODEL_JSON,
    WEIGHTS,
    ModelBoundaryError,
    load_weights,
    rebuild_model,
    save_trusted_model,
)
from mlipilot.model_files import read_package

PROGRAM = Path(__file__).parents[2] / "services/mlipilot/code_mode/template/training/program.py"
EXACT = 0.0  # same weights, same graph, same dtype: bit-identical


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a shared machine: one torch thread, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def program() -> ModuleType:
    """The baseline training program, imported as a module (its functions, not its main)."""
    spec = importlib.util.spec_from_file_location("code_mode_program", PROGRAM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(program: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.json + weights.pt of a tiny untrained model, written as the program writes them."""
    job = {**program.KNOBS, "num_channels": 8, "num_interactions": 1, "correlation": 2}
    z_table = utils.AtomicNumberTable([29])
    config = program.model_config(job, z_table, np.array([-3.5]), 12.0, 0.7)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = program.build_model(config)
    finally:
        torch.set_default_dtype(before)
    out = tmp_path_factory.mktemp("model")
    (out / MODEL_JSON).write_text(json.dumps({"class": "ScaleShiftMACE", "kwargs": config}))
    torch.save(model.state_dict(), out / WEIGHTS)
    return out


def _energy_forces(model: torch.nn.Module) -> tuple[float, np.ndarray]:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=1)
    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        graph = data.AtomicData.from_config(
            data.config_from_atoms(atoms), z_table=z_table, cutoff=float(model.r_max)
        )
    finally:
        torch.set_default_dtype(before)
    batch = next(iter(torch_geometric.dataloader.DataLoader([graph], batch_size=1)))
    out = model(batch.to_dict(), training=False)
    return out["energy"].item(), out["forces"].detach().numpy()


def _copy(model_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in (MODEL_JSON, WEIGHTS):
        (dest / name).write_bytes((model_dir / name).read_bytes())
    return dest


def _edit_json(model_dir: Path, edit) -> None:
    doc = json.loads((model_dir / MODEL_JSON).read_text())
    edit(doc)
    (model_dir / MODEL_JSON).write_text(json.dumps(doc))


def test_rebuilt_model_predicts_what_the_saved_one_did(model_dir: Path, tmp_path: Path) -> None:
    rebuilt = rebuild_model(model_dir)
    assert type(rebuilt).__name__ == "ScaleShiftMACE"
    assert rebuilt.r_max.dtype == torch.float64
    state = torch.load(model_dir / WEIGHTS, weights_only=True)
    for key, tensor in rebuilt.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    # The scorer's path: checked, written as a package, rebuilt from it.
    trusted = save_trusted_model(model_dir, tmp_path / "trusted" / "model-package.pt")
    scorer_model = read_package(trusted)
    e_rebuilt, f_rebuilt = _energy_forces(rebuilt)
    e_scorer, f_scorer = _energy_forces(scorer_model)
    assert abs(e_rebuilt - e_scorer) <= EXACT
    assert np.abs(f_rebuilt - f_scorer).max() <= EXACT


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d.update({"class": "os.system"}), "class"),
        (lambda d: d.update({"class": "subprocess.Popen"}), "class"),
        (lambda d: d["kwargs"].update({"interaction_cls": "subprocess.Popen"}), "interaction_cls"),
        (lambda d: d["kwargs"].update({"gate": "os.system"}), "kwargs.gate"),
        (lambda d: d["kwargs"].update({"readout_cls": "builtins.eval"}), "kwargs.readout_cls"),
        (lambda d: d["kwargs"].update({"hidden_irreps": {"py/object": "os.system"}}), "hidden"),
        (lambda d: d["kwargs"].update({"hidden_irreps": "8x0e + nonsense"}), "hidden_irreps"),
        (lambda d: d["kwargs"].update({"cueq_config": {"enabled": True}}), "kwargs.cueq_config"),
        (lambda d: d["kwargs"].update({"num_interactions": True}), "kwargs.num_interactions"),
        (lambda d: d["kwargs"].update({"r_max": "5.0"}), "kwargs.r_max"),
        (lambda d: d.update({"pickle": "weights.pkl"}), "pickle"),
        (lambda d: d.update({"dtype": "object"}), "dtype"),
    ],
)
def test_model_json_outside_the_allow_list_is_refused(
    model_dir: Path, tmp_path: Path, edit, key: str
) -> None:
    candidate = _copy(model_dir, tmp_path / "candidate")
    _edit_json(candidate, edit)
    with pytest.raises(ModelBoundaryError) as info:
        rebuild_model(candidate)
    message = str(info.value)
    assert str(candidate / MODEL_JSON) in message
    assert key in message


def test_non_finite_numbers_are_refused(model_dir: Path, tmp_path: Path) -> None:
    candidate = _copy(model_dir, tmp_path / "candidate")
    text = (candidate / MODEL_JSON).read_text().replace('"r_max": 5.0', '"r_max": NaN')
    (candidate / MODEL_JSON).write_text(text)
    with pytest.raises(ModelBoundaryError, match="NaN"):
        rebuild_model(candidate)


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_unrun(model_dir: Path, tmp_path: Path) -> None:
    # mace's import sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, which turns torch.load's default
    # into weights_only=False: the boundary must pass weights_only=True explicitly.
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == "1"
    candidate = _copy(model_dir, tmp_path / "candidate")
    marker = tmp_path / "marker"
    state = torch.load(candidate / WEIGHTS, weights_only=True)
    torch.save({**state, "extra": _Payload(marker)}, candidate / WEIGHTS)

    with pytest.raises(ModelBoundaryError) as info:
        rebuild_model(candidate)
    assert str(candidate / WEIGHTS) in str(info.value)
    assert "weights_only" in str(info.value)
    with pytest.raises(ModelBoundaryError):
        load_weights(candidate / WEIGHTS)
    assert not marker.exists()

    # The payload is real: the unsafe load the boundary avoids does run it.
    torch.load(candidate / WEIGHTS, weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.update({"extra.weight": torch.zeros(3)}), "unexpected keys"),
        (lambda s: s.pop(next(iter(s))), "missing keys"),
        (lambda s: s.update({k: torch.zeros(7) for k in list(s)[:1]}), "builds"),
        (lambda s: s.update({k: v.float() for k, v in list(s.items())[-1:]}), "float32"),
    ],
)
def test_weights_that_do_not_fit_are_refused(
    model_dir: Path, tmp_path: Path, change, expected: str
) -> None:
    candidate = _copy(model_dir, tmp_path / "candidate")
    state = dict(torch.load(candidate / WEIGHTS, weights_only=True))
    change(state)
    torch.save(state, candidate / WEIGHTS)
    with pytest.raises(ModelBoundaryError, match=expected) as info:
        rebuild_model(candidate)
    assert str(candidate / WEIGHTS) in str(info.value)


def test_weights_that_are_not_a_state_dict_are_refused(model_dir: Path, tmp_path: Path) -> None:
    candidate = _copy(model_dir, tmp_path / "candidate")
    torch.save([torch.zeros(2)], candidate / WEIGHTS)
    with pytest.raises(ModelBoundaryError, match="name to tensor"):
        rebuild_model(candidate)
    (candidate / WEIGHTS).write_bytes(b"not a torch file")
    with pytest.raises(ModelBoundaryError, match="not a torch file"):
        rebuild_model(candidate)


@pytest.mark.parametrize("name", [MODEL_JSON, WEIGHTS])
def test_missing_or_symlinked_files_are_refused(model_dir: Path, tmp_path: Path, name: str) -> None:
    candidate = _copy(model_dir, tmp_path / "candidate")
    (candidate / name).unlink()
    with pytest.raises(ModelBoundaryError, match="no such file") as info:
        rebuild_model(candidate)
    assert str(candidate / name) in str(info.value)
    # A link the sandbox planted towards a host file is not followed.
    (candidate / name).symlink_to(model_dir / name)
    with pytest.raises(ModelBoundaryError, match="regular file"):
        rebuild_model(candidate)
