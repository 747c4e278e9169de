"""Read a YAML file into a validated pydantic model, with errors that name the file and key."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mlipilot.errors import MlipilotError, error_fields, format_validation_error

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
    return parse_yaml_model(raw, model, where)


def parse_yaml_model(raw: bytes, model: type[M], where: str) -> tuple[M, str]:
    """``model`` validated from YAML bytes (a file, or a document sent over the wire)."""
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise MlipilotError(f"{where}: not valid YAML: {exc}") from exc
    except RecursionError as exc:  # PyYAML composes nested collections recursively
        raise MlipilotError(f"{where}: not valid YAML: nested too deeply") from exc
    if not isinstance(data, dict):
        raise MlipilotError(f"{where}: expected a mapping at the top level")
    try:
        return model.model_validate(data), hashlib.sha256(raw).hexdigest()
    except ValidationError as exc:
        message = format_validation_error(exc, where)
        raise MlipilotError(message, fields=error_fields(exc)) from exc
