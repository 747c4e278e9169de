"""The model boundary: a code-mode candidate hands the scorer data, never objects.

A candidate's training program is agent-written code. It runs sandboxed, and what it leaves in
its out folder is as untrusted as the program: unpickling a file it wrote (``torch.load`` with
``weights_only=False``, which the scorer uses on models it trained itself) would run whatever
code the pickle names, outside the sandbox. So a candidate's model crosses as

- ``model.json``: the model class and its constructor arguments in plain JSON. Only allow-listed
  MACE classes, interaction and readout blocks and gates are accepted, by name; irreps are
  parsed from strings; everything else must be a number, a bool, a string from a fixed set or a
  list of these. Anything else is refused with the file and the key;
- ``weights.pt``: ``model.state_dict()``, read with ``torch.load(weights_only=True)`` (tensors
  and plain containers only) and loaded with ``strict=True``.

``rebuild_model`` constructs the model from these two files here, outside the sandbox;
``save_trusted_model`` then pickles the rebuilt model for the existing scorer, which loads
whole models it wrote itself.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import mace  # noqa: F401  (before e3nn: it sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which e3nn needs)
import numpy as np
import torch
from e3nn import o3
from mace import modules

from mlipilot.atomic_files import replaced_atomically
from mlipilot.errors import MlipilotError, shown
from mlipilot.process_globals import GLOBALS_LOCK

MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"
MAX_MODEL_JSON_BYTES = 1 << 20
DTYPES = {"float32": torch.float32, "float64": torch.float64}

MODEL_CLASSES: dict[str, type[torch.nn.Module]] = {
    "MACE": modules.MACE,
    "ScaleShiftMACE": modules.ScaleShiftMACE,
}
INTERACTION_BLOCKS = {
    name: modules.interaction_classes[name]
    for name in (
        "RealAgnosticInteractionBlock",
        "RealAgnosticResidualInteractionBlock",
        "RealAgnosticDensityInteractionBlock",
        "RealAgnosticDensityResidualInteractionBlock",
        "RealAgnosticAttResidualInteractionBlock",
        "RealAgnosticResidualNonLinearInteractionBlock",
    )
}
READOUT_BLOCKS = {
    "NonLinearReadoutBlock": modules.NonLinearReadoutBlock,
    "NonLinearBiasReadoutBlock": modules.NonLinearBiasReadoutBlock,
}
GATES: dict[str, Callable | None] = {name: modules.gate_dict[name] for name in modules.gate_dict}
# Sizes a scorer can build outside the sandbox without running out of memory.
MAX_INT = 4096
MAX_IRREP_MUL, MAX_IRREP_L = 1024, 4


class ModelBoundaryError(MlipilotError):
    """A candidate's model.json or weights.pt that the scorer refuses to load."""


class _Refused(Exception):
    """Raised by a converter; turned into a ModelBoundaryError naming file and key."""


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Refused(f"expected a finite number, got {shown(value)}")
    return float(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise _Refused(f"expected an integer in [0, {MAX_INT}], got {shown(value)}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Refused(f"expected true or false, got {shown(value)}")
    return value


def _list_of(item: Callable[[Any], Any]) -> Callable[[Any], list]:
    def convert(value: Any) -> list:
        if not isinstance(value, list) or len(value) > MAX_INT:
            raise _Refused(f"expected a list (at most {MAX_INT} items), got {shown(value)}")
        return [item(v) for v in value]

    return convert


def _one_or_list(item: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: _list_of(item)(value) if isinstance(value, list) else item(value)


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _named(table: dict[str, Any]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if not isinstance(value, str) or value not in table:
            raise _Refused(f"{shown(value)} is not allowed; allowed: {sorted(table)}")
        return table[value]

    return convert


def _choice(*options: str) -> Callable[[Any], str]:
    return _named({o: o for o in options})


def _irreps(value: Any) -> o3.Irreps:
    if not isinstance(value, str) or len(value) > 1000:
        raise _Refused(f"expected irreps as a string like '16x0e + 16x1o', got {shown(value)}")
    try:
        irreps = o3.Irreps(value)
    except (ValueError, AssertionError) as exc:
        raise _Refused(f"cannot parse irreps {shown(value)}: {exc}") from None
    if any(mul > MAX_IRREP_MUL or ir.l > MAX_IRREP_L for mul, ir in irreps):
        raise _Refused(f"irreps {value} exceed {MAX_IRREP_MUL} channels or l={MAX_IRREP_L}")
    return irreps


def _short_str(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 100:
        raise _Refused(f"expected a name (1-100 characters), got {shown(value)}")
    return value


def _energies(value: Any) -> np.ndarray:
    """Isolated-atom energies: one per element, or a list per head."""
    return np.array(_list_of(_one_or_list(_number))(value), dtype=float)


MACE_KWARGS: dict[str, Callable[[Any], Any]] = {
    "r_max": _number,
    "num_bessel": _int,
    "num_polynomial_cutoff": _int,
    "max_ell": _int,
    "interaction_cls": _named(INTERACTION_BLOCKS),
    "interaction_cls_first": _named(INTERACTION_BLOCKS),
    "num_interactions": _int,
    "num_elements": _int,
    "hidden_irreps": _irreps,
    "MLP_irreps": _irreps,
    "atomic_energies": _energies,
    "avg_num_neighbors": _number,
    "atomic_numbers": _list_of(_int),
    "correlation": _one_or_list(_int),
    "gate": _named(GATES),
    "pair_repulsion": _bool,
    "apply_cutoff": _bool,
    "use_reduced_cg": _bool,
    "use_so3": _bool,
    "use_agnostic_product": _bool,
    "use_last_readout_only": _bool,
    "use_embedding_readout": _bool,
    "distance_transform": _choice("None", "Agnesi", "Soft"),
    "edge_irreps": _optional(_irreps),
    "use_edge_irreps_first": _bool,
    "radial_MLP": _optional(_list_of(_int)),
    "radial_type": _choice("bessel", "gaussian", "chebyshev"),
    "heads": _optional(_list_of(_short_str)),
    "readout_cls": _named(READOUT_BLOCKS),
    "keep_last_layer_irreps": _bool,
}
SCALE_SHIFT_KWARGS = {
    **MACE_KWARGS,
    "atomic_inter_scale": _one_or_list(_number),
    "atomic_inter_shift": _one_or_list(_number),
}
KWARGS_OF = {"MACE": MACE_KWARGS, "ScaleShiftMACE": SCALE_SHIFT_KWARGS}


@contextmanager
def _open_regular(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for reading; it must be a regular file and not a symlink.

    The sandbox could leave a symlink to a host file in its out folder; following it would
    read (and perhaps quote in an error) a file the candidate was never given.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ModelBoundaryError(f"{path}: no such file (the program did not write it)") from None
    except OSError as exc:  # ELOOP: a symlink
        raise ModelBoundaryError(f"{path}: cannot open as a regular file: {exc}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ModelBoundaryError(f"{path}: not a regular file")
        yield fh


def read_model_spec(path: Path) -> tuple[type[torch.nn.Module], torch.dtype, dict[str, Any]]:
    """(class, dtype, constructor kwargs) from a model.json; refuses anything not allow-listed."""
    with _open_regular(path) as fh:
        raw = fh.read(MAX_MODEL_JSON_BYTES + 1)
    if len(raw) > MAX_MODEL_JSON_BYTES:
        raise ModelBoundaryError(f"{path}: larger than {MAX_MODEL_JSON_BYTES} bytes")
    try:
        doc = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, _Refused) as exc:
        raise ModelBoundaryError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelBoundaryError(f"{path}: expected an object with class, dtype and kwargs")
    unknown = sorted(set(doc) - {"class", "dtype", "kwargs"})
    if unknown:
        raise _error(path, unknown[0], "unknown key; allowed: class, dtype, kwargs")
    try:
        cls = _named(MODEL_CLASSES)(doc.get("class"))
    except _Refused as exc:
        raise _error(path, "class", str(exc)) from None
    try:
        dtype = _named(DTYPES)(doc.get("dtype", "float64"))
    except _Refused as exc:
        raise _error(path, "dtype", str(exc)) from None
    given = doc.get("kwargs")
    if not isinstance(given, dict):
        raise _error(path, "kwargs", f"expected an object, got {shown(given)}")
    allowed = KWARGS_OF[doc["class"]]
    kwargs = {}
    for key, value in given.items():
        if key not in allowed:
            raise _error(path, f"kwargs.{key}", f"unknown key; allowed: {sorted(allowed)}")
        try:
            kwargs[key] = allowed[key](value)
        except _Refused as exc:
            raise _error(path, f"kwargs.{key}", str(exc)) from None
    return cls, dtype, kwargs


def _no_constant(name: str) -> None:
    raise _Refused(f"{name} is not a finite number")


def _error(path: Path, key: str, message: str) -> ModelBoundaryError:
    return ModelBoundaryError(f"{path}: {key}: {message}", fields=(key,))


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """MACE creates its buffers in torch's (process-wide) default dtype; the lock also covers
    e3nn's code generation while the model is built (see process_globals)."""
    with GLOBALS_LOCK:
        before = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(before)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict read with weights_only=True: a pickle naming any code is refused unrun."""
    try:
        with _open_regular(path) as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
    except ModelBoundaryError:
        raise
    except Exception as exc:  # UnpicklingError, RuntimeError (not a zip), EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelBoundaryError(
            f"{path}: not a tensors-only state dict (torch.load with weights_only=True refused "
            f"it: {first}); save it with torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelBoundaryError(f"{path}: expected a mapping of parameter name to tensor")
    return state


def _check_state(path: Path, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelBoundaryError(
            f"{path}: does not match {MODEL_JSON}: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''}"
        )
    for key, tensor in expected.items():
        got = state[key]
        if got.shape != tensor.shape or got.dtype != tensor.dtype:
            raise ModelBoundaryError(
                f"{path}: {key} is {got.dtype} {tuple(got.shape)}, {MODEL_JSON} builds "
                f"{tensor.dtype} {tuple(tensor.shape)}"
            )


def rebuild_model(model_dir: Path) -> torch.nn.Module:
    """The candidate's model built from ``model_dir/model.json`` + ``weights.pt``, in eval mode."""
    model_dir = Path(model_dir)
    spec_path, weights_path = model_dir / MODEL_JSON, model_dir / WEIGHTS
    cls, dtype, kwargs = read_model_spec(spec_path)
    state = load_weights(weights_path)
    with _default_dtype(dtype):
        try:
            model = cls(**kwargs)
        except Exception as exc:  # the arguments passed the allow-list but do not fit together
            raise ModelBoundaryError(
                f"{spec_path}: {cls.__name__}(**kwargs) failed: {type(exc).__name__}: {exc}"
            ) from None
    _check_state(weights_path, model, state)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_trusted_model(model_dir: Path, trusted_path: Path) -> Path:
    """Rebuild the candidate's model and pickle it (ours now) where the scorer loads models."""
    model = rebuild_model(model_dir)
    trusted_path = Path(trusted_path)
    trusted_path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(trusted_path) as tmp:
        torch.save(model, tmp)
    return trusted_path
