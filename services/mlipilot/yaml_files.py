"""Read a YAML file into a validated pydantic model, with errors that name the file and key."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mlipilot.errors import MlipilotError, format_validation_error

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: str | Path, model: type[M], what: str) -> tuple[M, str]:
    """``model`` validated from the YAML mapping in ``path``, and the sha256 of its bytes.

    ``what`` names the kind of file in messages ("campaign file", "scorecard spec").
    """
    path = Path(path)
    where = f"{what} {path}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MlipilotError(f"{where}: cannot read it ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise MlipilotError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise MlipilotError(f"{where}: expected a mapping at the top level")
    try:
        return model.model_validate(data), hashlib.sha256(raw).hexdigest()
    except ValidationError as exc:
        raise MlipilotError(format_validation_error(exc, where)) from exc
