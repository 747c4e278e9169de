"""Loading a model file to score: always a model package (configuration + tensors).

A pickled model is never loaded here: unpickling runs code, and the scorer judges models it
did not make (model_files/package.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mlipilot.errors import MlipilotError
from mlipilot.model_files import read_package


def load_model(model_path: Path) -> torch.nn.Module:
    """The model on the CPU; safe to call from parallel scoring threads (see process_globals)."""
    if not Path(model_path).is_file():
        raise MlipilotError(f"MACE model {model_path}: no such file")
    return read_package(Path(model_path))
