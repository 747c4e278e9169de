"""A model file as it crosses a boundary: a configuration plus tensors, never a pickle.

Unpickling runs whatever code the pickle names, so a service that loads a caller's pickled
model (``torch.load(weights_only=False)``, what mace_run_train's ``.model`` files need) runs
the caller's code. Every model the orchestrator and the scorecard load is instead one file,

    torch.save({"format": FORMAT, "config": "<JSON: class, dtype, kwargs>", "weights": state})

read with ``torch.load(weights_only=True)`` (tensors, strings and plain containers only) after
its zip directory is checked (stored entries only, bounded sizes: no zip bomb), the
configuration checked against the allow-list (config.py), and the model rebuilt from it with
the weights loaded ``strict=True``. Trainers write it from the model they trained
(``write_package``); users get a MACE file too (``write_mace_file``), written for them and
never read back by a service.
"""

from __future__ import annotations

import copy
import os
import stat
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mlipilot.atomic_files import replaced_atomically
from mlipilot.errors import shown
from mlipilot.model_files.config import (
    ModelConfig,
    ModelFileError,
    build_checked,
    config_document,
    parse_config_text,
)
from mlipilot.process_globals import GLOBALS_LOCK

FORMAT = "mlipilot-model/1"
PACKAGE_NAME = "model-package.pt"  # a candidate's model, in its folder
MAX_PACKAGE_BYTES = 512 << 20  # the largest configuration allowed is ~400 MB of float64
MAX_ZIP_ENTRIES = 100_000
_SKELETONS: OrderedDict[str, torch.nn.Module] = OrderedDict()  # by canonical configuration
_SKELETONS_KEPT = 4


@contextmanager
def open_regular(path: Path, max_bytes: int) -> Iterator[BinaryIO]:
    """``path`` opened for reading: a regular file, not a symlink, at most ``max_bytes``.

    A symlink could point at a host file the writer was never given; a FIFO or a device
    (``/dev/zero``) would block or never end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except OSError as exc:  # ELOOP: a symlink
        raise ModelFileError(f"{path}: cannot open as a regular file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ModelFileError(f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise ModelFileError(
                f"{path}: {info.st_size} bytes, over the {max_bytes} bytes allowed"
            )
        yield fh


def load_tensors(fh: BinaryIO, where: str, max_bytes: int) -> Any:
    """``torch.load(weights_only=True)`` of an open torch file, after checking its zip
    directory: only stored (uncompressed) entries adding up to at most ``max_bytes``."""
    try:
        with zipfile.ZipFile(fh) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelFileError(f"{where}: not a torch file (zip): {exc}") from None
    if len(entries) > MAX_ZIP_ENTRIES or sum(e.file_size for e in entries) > max_bytes:
        raise ModelFileError(f"{where}: expands to more than {max_bytes} bytes")
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        raise ModelFileError(f"{where}: compressed entries (torch.save writes none)")
    fh.seek(0)
    try:
        return torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ModelFileError(
            f"{where}: holds more than tensors (torch.load with weights_only=True refused it: "
            f"{first[:300]})"
        ) from None


def state_dict_of(value: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise ModelFileError(f"{where}: expected a mapping of parameter name to tensor")
    return value


def write_package(model: torch.nn.Module, path: Path) -> Path:
    """Write ``model`` (one of ours: trained here or by our trainer) as a model package."""
    import json

    doc = config_document(model)
    config = json.dumps(doc, sort_keys=True, allow_nan=False)
    return write_checked_package(config, model.state_dict(), path)


def write_checked_package(config: str, state: dict[str, torch.Tensor], path: Path) -> Path:
    """A package of a configuration's JSON text and a state dict, both already checked."""
    payload = {
        "format": FORMAT,
        "config": config,
        "weights": {k: v.detach().cpu() for k, v in state.items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_package(path: Path, max_bytes: int = MAX_PACKAGE_BYTES) -> torch.nn.Module:
    """The model in the package at ``path``, rebuilt and in eval mode; refuses anything else
    (a pickled model included) with a ModelFileError naming the file and what is wrong."""
    path = Path(path)
    with open_regular(path, max_bytes) as fh:
        payload = load_tensors(fh, str(path), max_bytes)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelFileError(
            f"{path}: not an mlipilot model package (format {shown(got)}, expected {FORMAT!r})"
        )
    if sorted(payload) != ["config", "format", "weights"] or not isinstance(payload["config"], str):
        raise ModelFileError(f"{path}: expected exactly format, config (JSON text) and weights")
    config = parse_config_text(payload["config"], f"{path}: config")
    weights = state_dict_of(payload["weights"], f"{path}: weights")
    return assemble(config, weights, str(path))


def assemble(
    config: ModelConfig,
    state: dict[str, torch.Tensor],
    where: str,
    config_where: str | None = None,
) -> torch.nn.Module:
    """The model ``config`` describes with ``state`` loaded strictly, in eval mode; errors
    name ``config_where`` (default ``where``) when the model does not build, else ``where``."""
    with GLOBALS_LOCK:  # e3nn's code generation while building (see process_globals)
        model = _fresh(config, config_where or where)
    check_state(where, model, state)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _fresh(config: ModelConfig, where: str) -> torch.nn.Module:
    """A new model of this architecture: a copy of one built before (building computes the
    symmetric contraction's basis, seconds for correlation 3), else built now."""
    skeleton = _SKELETONS.get(config.canonical)
    if skeleton is None:
        skeleton = build_checked(config, where)
        _SKELETONS[config.canonical] = skeleton
        while len(_SKELETONS) > _SKELETONS_KEPT:
            _SKELETONS.popitem(last=False)
    _SKELETONS.move_to_end(config.canonical)
    return copy.deepcopy(skeleton)


def check_state(where: str, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``state`` has exactly the model's keys, each with its shape and dtype."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelFileError(
            f"{where}: weights do not match the configuration: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''}"
        )
    for key, tensor in expected.items():
        got = state[key]
        if got.shape != tensor.shape or got.dtype != tensor.dtype:
            raise ModelFileError(
                f"{where}: {key} is {got.dtype} {tuple(got.shape)}, the configuration builds "
                f"{tensor.dtype} {tuple(tensor.shape)}"
            )


def write_mace_file(package: Path, dest: Path) -> Path:
    """A MACE model file for users (``MACECalculator(model_paths=...)``), from a package: the
    model is rebuilt from checked data and pickled here, by us; no service ever reads it."""
    model = read_package(package)
    dest = Path(dest)
    with replaced_atomically(dest) as tmp:
        torch.save(model, tmp)
    return dest
