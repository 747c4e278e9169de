"""Loading a trained model file (a pickled MACE module, as mace_run_train writes it)."""

from __future__ import annotations

from pathlib import Path

import torch

from mlipilot.errors import MlipilotError
from mlipilot.process_globals import GLOBALS_LOCK


def load_model(model_path: Path) -> torch.nn.Module:
    """The model on the CPU; safe to call from parallel scoring threads (see process_globals)."""
    if not Path(model_path).is_file():
        raise MlipilotError(f"MACE model {model_path}: no such file")
    with GLOBALS_LOCK:
        return torch.load(model_path, map_location="cpu", weights_only=False)
