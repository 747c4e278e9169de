"""A MACE model's configuration as plain JSON, checked against an allow-list.

A model crosses every boundary (a code-mode program's sandbox, a Ray trainer, the scorecard
service) as this configuration plus a state dict of tensors, never as a pickled object. The
configuration names a MACE class, its interaction and readout blocks and its gate from fixed
tables, parses irreps from strings, and takes only numbers, booleans and short names
otherwise. Every key has a range as tight as what mace users actually train (MACE-MP:
lmax 3, correlation 3, two interactions, 128 channels, 89 elements), and the model's size is
estimated before it is built (size.py). Anything else is refused with the key and the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mace  # noqa: F401  (before e3nn: it sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which e3nn needs)
import numpy as np
import torch
from e3nn import o3
from mace import modules

from mlipilot.errors import MlipilotError, shown
from mlipilot.model_files.size import estimated_size

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

# Per-key limits: generous for real models, small enough that the worst combination still
# builds in seconds (the symmetric contraction's basis grows as (lmax+1)^(2*correlation)).
MAX_ELEMENTS = 118
MAX_INTERACTIONS = 4
MAX_CORRELATION = 3
MAX_ELL = 3
MAX_CHANNELS = 512
MAX_HIDDEN_IRREPS = 8
MAX_BESSEL = 32
MAX_POLYNOMIAL_CUTOFF = 16
MAX_RADIAL_LAYERS, MAX_RADIAL_WIDTH = 6, 512
MAX_HEADS = 16
MAX_R_MAX = 20.0
MAX_ENERGY = 1e7  # eV: isolated-atom energies, scale and shift
MAX_SIZE = 50_000_000  # parameter + buffer elements (estimated): 400 MB in float64
MAX_CONFIG_BYTES = 1 << 20


class ModelFileError(MlipilotError):
    """A model file, configuration or state dict that is refused: nothing of it was built."""


class _Refused(Exception):
    """Raised by a converter; turned into a ModelFileError naming the key."""


def _number(value: Any, low: float = -MAX_ENERGY, high: float = MAX_ENERGY) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Refused(f"expected a finite number, got {shown(value)}")
    if not low <= value <= high:
        raise _Refused(f"expected a number in [{low:g}, {high:g}], got {shown(value)}")
    return float(value)


def _in_range(low: float, high: float) -> Callable[[Any], float]:
    return lambda value: _number(value, low, high)


def _int(high: int, low: int = 0) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Refused(f"expected an integer in [{low}, {high}], got {shown(value)}")
        return value

    return convert


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Refused(f"expected true or false, got {shown(value)}")
    return value


def _list_of(item: Callable[[Any], Any], max_len: int) -> Callable[[Any], list]:
    def convert(value: Any) -> list:
        if not isinstance(value, list) or not 0 < len(value) <= max_len:
            raise _Refused(f"expected a list of 1 to {max_len} items, got {shown(value)}")
        return [item(v) for v in value]

    return convert


def _one_or_list(item: Callable[[Any], Any], max_len: int) -> Callable[[Any], Any]:
    return lambda value: _list_of(item, max_len)(value) if isinstance(value, list) else item(value)


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


def _irreps(max_mul: int, max_l: int, max_terms: int) -> Callable[[Any], o3.Irreps]:
    def convert(value: Any) -> o3.Irreps:
        if not isinstance(value, str) or len(value) > 200:
            raise _Refused(f"expected irreps as a string like '16x0e + 16x1o', got {shown(value)}")
        try:
            irreps = o3.Irreps(value)
        except (ValueError, AssertionError) as exc:
            raise _Refused(f"cannot parse irreps {shown(value)}: {exc}") from None
        if not 0 < len(irreps) <= max_terms or any(
            not 0 < mul <= max_mul or ir.l > max_l for mul, ir in irreps
        ):
            raise _Refused(
                f"irreps {value} must have 1 to {max_terms} terms of 1 to {max_mul} channels "
                f"with l at most {max_l}"
            )
        return irreps

    return convert


def _short_str(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 100:
        raise _Refused(f"expected a name (1-100 characters), got {shown(value)}")
    return value


def _energies(value: Any) -> np.ndarray:
    """Isolated-atom energies: one per element, or a list of them per head."""
    rows = _list_of(_one_or_list(_number, MAX_ELEMENTS), MAX_ELEMENTS)(value)
    try:
        return np.array(rows, dtype=float)
    except ValueError:  # rows of different lengths
        raise _Refused("expected one energy per element, or equal-length lists per head") from None


_HIDDEN = _irreps(MAX_CHANNELS, MAX_ELL, MAX_HIDDEN_IRREPS)
MACE_KWARGS: dict[str, Callable[[Any], Any]] = {
    "r_max": _in_range(0.5, MAX_R_MAX),
    "num_bessel": _int(MAX_BESSEL, 1),
    "num_polynomial_cutoff": _int(MAX_POLYNOMIAL_CUTOFF, 1),
    "max_ell": _int(MAX_ELL),
    "interaction_cls": _named(INTERACTION_BLOCKS),
    "interaction_cls_first": _named(INTERACTION_BLOCKS),
    "num_interactions": _int(MAX_INTERACTIONS, 1),
    "num_elements": _int(MAX_ELEMENTS, 1),
    "hidden_irreps": _HIDDEN,
    "MLP_irreps": _irreps(MAX_CHANNELS, 0, 1),
    "atomic_energies": _energies,
    "avg_num_neighbors": _in_range(1e-6, 1e4),
    "atomic_numbers": _list_of(_int(MAX_ELEMENTS, 1), MAX_ELEMENTS),
    "correlation": _one_or_list(_int(MAX_CORRELATION, 1), MAX_INTERACTIONS),
    "gate": _named(GATES),
    "pair_repulsion": _bool,
    "apply_cutoff": _bool,
    "use_reduced_cg": _bool,
    "use_so3": _bool,
    "use_agnostic_product": _bool,
    "use_last_readout_only": _bool,
    "use_embedding_readout": _bool,
    "distance_transform": _choice("None", "Agnesi", "Soft"),
    "edge_irreps": _optional(_HIDDEN),
    "use_edge_irreps_first": _bool,
    "radial_MLP": _optional(_list_of(_int(MAX_RADIAL_WIDTH, 1), MAX_RADIAL_LAYERS)),
    "radial_type": _choice("bessel", "gaussian", "chebyshev"),
    "heads": _optional(_list_of(_short_str, MAX_HEADS)),
    "readout_cls": _named(READOUT_BLOCKS),
    "keep_last_layer_irreps": _bool,
}
SCALE_SHIFT_KWARGS = {
    **MACE_KWARGS,
    "atomic_inter_scale": _one_or_list(_number, MAX_HEADS),
    "atomic_inter_shift": _one_or_list(_number, MAX_HEADS),
}
KWARGS_OF = {"MACE": MACE_KWARGS, "ScaleShiftMACE": SCALE_SHIFT_KWARGS}
# What every model needs (mace's constructor has no default for these).
REQUIRED = (
    "r_max",
    "num_bessel",
    "num_polynomial_cutoff",
    "max_ell",
    "interaction_cls",
    "interaction_cls_first",
    "num_interactions",
    "num_elements",
    "hidden_irreps",
    "MLP_irreps",
    "atomic_energies",
    "avg_num_neighbors",
    "atomic_numbers",
    "correlation",
    "gate",
)


@dataclass(frozen=True)
class ModelConfig:
    """A checked configuration: what to build, and the canonical JSON it came from."""

    cls: type[torch.nn.Module]
    dtype: torch.dtype
    kwargs: dict[str, Any]
    canonical: str  # sorted-key JSON of the document: the same architecture, the same text

    def build(self) -> torch.nn.Module:
        """The model with fresh weights (in this dtype; the caller holds GLOBALS_LOCK)."""
        before = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            return self.cls(**self.kwargs)
        except Exception as exc:  # the arguments passed the allow-list but do not fit together
            failed = f"{self.cls.__name__}(**kwargs) failed: {type(exc).__name__}: {exc}"
            raise _Refused(failed) from None
        finally:
            torch.set_default_dtype(before)


def parse_config_text(text: bytes | str, where: str) -> ModelConfig:
    """A ModelConfig from the JSON text of a configuration; ``where`` names it in errors."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ModelFileError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (ValueError, _Refused) as exc:
        raise ModelFileError(f"{where}: not valid JSON: {exc}") from None
    return parse_config(doc, where)


def parse_config(doc: Any, where: str) -> ModelConfig:
    """A ModelConfig from a parsed document ``{class, dtype, kwargs}``; refuses anything not
    allow-listed, out of range, inconsistent or too large to build."""
    if not isinstance(doc, dict):
        raise ModelFileError(f"{where}: expected an object with class, dtype and kwargs")
    unknown = sorted(set(doc) - {"class", "dtype", "kwargs"})
    if unknown:
        raise _error(where, unknown[0], "unknown key; allowed: class, dtype, kwargs")
    cls = _converted(where, "class", _named(MODEL_CLASSES), doc.get("class"))
    dtype = _converted(where, "dtype", _named(DTYPES), doc.get("dtype", "float64"))
    given = doc.get("kwargs")
    if not isinstance(given, dict):
        raise _error(where, "kwargs", f"expected an object, got {shown(given)}")
    allowed = KWARGS_OF[doc["class"]]
    kwargs = {}
    for key, value in given.items():
        if key not in allowed:
            raise _error(where, f"kwargs.{key}", f"unknown key; allowed: {sorted(allowed)}")
        kwargs[key] = _converted(where, f"kwargs.{key}", allowed[key], value)
    missing = [k for k in REQUIRED if k not in kwargs]
    if missing:
        raise _error(where, f"kwargs.{missing[0]}", "required")
    _check_consistent(where, kwargs)
    size = estimated_size(kwargs)
    if size > MAX_SIZE:
        raise _error(
            where, "kwargs", f"builds about {size:,} parameters and buffers, over {MAX_SIZE:,}"
        )
    canonical = json.dumps(doc, sort_keys=True, allow_nan=False)
    return ModelConfig(cls, dtype, kwargs, canonical)


def _check_consistent(where: str, kwargs: dict[str, Any]) -> None:
    """What the keys say about each other: one atomic number and energy per element, a
    correlation per interaction."""
    elements = kwargs["num_elements"]
    numbers = kwargs["atomic_numbers"]
    if len(numbers) != elements or len(set(numbers)) != len(numbers):
        raise _error(where, "kwargs.atomic_numbers", f"expected {elements} distinct atomic numbers")
    energies = kwargs["atomic_energies"]
    if energies.ndim > 2 or energies.shape[-1] != elements:
        raise _error(
            where, "kwargs.atomic_energies", f"expected {elements} energies (per head: a list each)"
        )
    correlation = kwargs["correlation"]
    if isinstance(correlation, list) and len(correlation) != kwargs["num_interactions"]:
        raise _error(where, "kwargs.correlation", "expected one value per interaction")


def _converted(where: str, key: str, convert: Callable[[Any], Any], value: Any) -> Any:
    try:
        return convert(value)
    except _Refused as exc:
        raise _error(where, key, str(exc)) from None


def _no_constant(name: str) -> None:
    raise _Refused(f"{name} is not a finite number")


def _error(where: str, key: str, message: str) -> ModelFileError:
    return ModelFileError(f"{where}: {key}: {message}", fields=(key,))


def build_checked(config: ModelConfig, where: str) -> torch.nn.Module:
    """``config.build()`` with a refusal named after ``where``."""
    try:
        return config.build()
    except _Refused as exc:
        raise ModelFileError(f"{where}: {exc}") from None


# --- the other way: a live model (ours) as a configuration document -----------------------


def config_document(model: torch.nn.Module) -> dict[str, Any]:
    """The ``{class, dtype, kwargs}`` document that rebuilds ``model`` (a ScaleShiftMACE that
    mace_run_train trained, in this process or a trainer's), checked by ``parse_config``."""
    from mace.tools.scripts_utils import extract_config_mace_model

    name = type(model).__name__
    if name != "ScaleShiftMACE":
        raise ModelFileError(f"cannot describe a {name}: only ScaleShiftMACE models are exported")
    extracted = extract_config_mace_model(model)
    if extracted.get("num_interactions") == 1:  # its only readout is linear, not readout_cls
        extracted.pop("readout_cls", None)
    kwargs: dict[str, Any] = {}
    for key, value in extracted.items():
        if key not in SCALE_SHIFT_KWARGS:
            if value is not None:  # cueq_config, embedding_specs: features we do not carry
                raise ModelFileError(f"cannot export {name}: {key} is set ({shown(value)})")
            continue
        kwargs[key] = _plain(key, value)
    dtype = next(model.parameters()).dtype
    doc = {"class": name, "dtype": str(dtype).removeprefix("torch."), "kwargs": kwargs}
    parse_config(doc, f"the configuration of this {name}")  # what a reader will accept
    return doc


def _plain(key: str, value: Any) -> Any:
    """``value`` as JSON: classes and gates by their allow-listed names, irreps as text."""
    tables = {
        "interaction_cls": INTERACTION_BLOCKS,
        "interaction_cls_first": INTERACTION_BLOCKS,
        "readout_cls": READOUT_BLOCKS,
        "gate": GATES,
    }
    if key in tables:
        names = [n for n, v in tables[key].items() if v is value]
        if not names:
            raise ModelFileError(f"cannot export {key} {shown(value)}: not allow-listed")
        return names[0]
    if key == "distance_transform":
        return "None" if value is None else str(value)
    if isinstance(value, o3.Irreps):
        return str(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
