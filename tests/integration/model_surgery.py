"""Trained models made bad on purpose, for tests that need an unstable or broken potential."""

from __future__ import annotations

from pathlib import Path

import torch


def scaled_model(model_path: Path, factor: float, out: Path) -> Path:
    """The model with its energy scale multiplied: negative flips every force, NaN breaks it."""
    model = torch.load(model_path, map_location="cpu", weights_only=False)
    model.scale_shift.scale *= factor
    torch.save(model, out)
    return out
