"""Trained models made bad on purpose, for tests that need an unstable or broken potential."""

from __future__ import annotations

import json
from pathlib import Path

from mlipilot.model_files import read_package
from mlipilot.model_files.config import config_document
from mlipilot.model_files.package import write_checked_package


def scaled_model(model_path: Path, factor: float, out: Path) -> Path:
    """The model with its energy scale multiplied: negative flips every force, NaN breaks it.

    The configuration keeps the old scale (it must be finite); the state dict, which is what
    the model runs with, carries the new one."""
    model = read_package(model_path)
    config = json.dumps(config_document(model), sort_keys=True)
    model.scale_shift.scale *= factor
    return write_checked_package(config, model.state_dict(), out)
