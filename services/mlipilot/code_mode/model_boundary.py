"""The model boundary: a code-mode candidate hands the scorer data, never objects.

A candidate's training program is agent-written code. It runs sandboxed, and what it leaves in
its out folder is as untrusted as the program: unpickling a file it wrote would run whatever
code the pickle names, outside the sandbox. So a candidate's model crosses as

- ``model.json``: the model class and its constructor arguments in plain JSON, checked against
  the allow-list of model_files/config.py (classes, blocks and gates by name, irreps from
  strings, every number in a tight range, the model's size estimated before it is built);
- ``weights.pt``: ``model.state_dict()``, read with ``torch.load(weights_only=True)`` (tensors
  and plain containers only) and loaded with ``strict=True``.

``rebuild_model`` constructs the model from these two files here, outside the sandbox;
``save_trusted_model`` writes them as the model package the scorer reads (the same form
recipe-mode trainers hand back), once both are checked.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mlipilot.model_files.config import ModelConfig, ModelFileError, parse_config_text
from mlipilot.model_files.package import (
    MAX_PACKAGE_BYTES,
    assemble,
    load_tensors,
    open_regular,
    state_dict_of,
    write_checked_package,
)

MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"
MAX_MODEL_JSON_BYTES = 1 << 20
ModelBoundaryError = ModelFileError  # what a refused candidate model raises


def read_model_config(path: Path) -> ModelConfig:
    """The checked configuration in a candidate's model.json."""
    with open_regular(path, MAX_MODEL_JSON_BYTES) as fh:
        raw = fh.read()
    return parse_config_text(raw, str(path))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict read with weights_only=True: a pickle naming any code is refused unrun."""
    with open_regular(path, MAX_PACKAGE_BYTES) as fh:
        state = load_tensors(fh, f"{path}", MAX_PACKAGE_BYTES)
    return state_dict_of(state, str(path))


def _checked(model_dir: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], torch.nn.Module]:
    model_dir = Path(model_dir)
    config = read_model_config(model_dir / MODEL_JSON)
    weights_path = model_dir / WEIGHTS
    state = load_weights(weights_path)
    model = assemble(config, state, str(weights_path), str(model_dir / MODEL_JSON))
    return config, state, model


def rebuild_model(model_dir: Path) -> torch.nn.Module:
    """The candidate's model built from ``model_dir/model.json`` + ``weights.pt``, in eval mode."""
    return _checked(model_dir)[2]


def save_trusted_model(model_dir: Path, package: Path) -> Path:
    """Check the candidate's model (it must rebuild) and write it as a model package."""
    config, state, _ = _checked(model_dir)
    return write_checked_package(config.canonical, state, package)
