"""Read a YAML file into a validated pydantic model, with errors that name the file and key.

Aliases (``*name``) are refused: a few hundred bytes of nested aliases (a "billion laughs")
parse into a structure that is small in memory but gigabytes once written out as JSON (the
run folder's campaign.json) or walked key by key. None of the project's documents needs them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mlipilot.errors import MlipilotError, error_fields, format_validation_error

M = TypeVar("M", bound=BaseModel)
MAX_YAML_BYTES = 4 << 20  # scorecard specs and campaign files are pages, not data sets


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader that stops at the first alias, before building anything."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed here", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml_model(
    path: str | Path, model: type[M], what: str, max_bytes: int = MAX_YAML_BYTES
) -> tuple[M, str]:
    """``model`` validated from the YAML mapping in ``path``, and the sha256 of its bytes.

    ``what`` names the kind of file in messages ("campaign file", "scorecard spec").
    """
    path = Path(path)
    where = f"{what} {path}"
    try:
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise MlipilotError(f"{where}: cannot read it ({exc.strerror})") from exc
    if len(raw) > max_bytes:
        raise MlipilotError(f"{where}: larger than the {max_bytes} bytes allowed")
    return parse_yaml_model(raw, model, where)


def safe_load(raw: bytes | str) -> Any:
    """``yaml.safe_load`` without aliases (see above)."""
    return yaml.load(raw, Loader=_NoAliasLoader)  # a SafeLoader subclass: no Python objects


def parse_yaml_model(raw: bytes, model: type[M], where: str) -> tuple[M, str]:
    """``model`` validated from YAML bytes (a file, or a document sent over the wire)."""
    try:
        data = safe_load(raw)
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
