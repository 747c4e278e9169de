"""Error messages that say which file, key and value to change."""

from __future__ import annotations

import reprlib
from typing import Any

from pydantic import ValidationError

# repr() of a value quoted in a message, cut short: a document can hold a huge string, deep
# nesting, or YAML aliases that repeat one list exponentially often (a "billion laughs").
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 120


class MlipilotError(ValueError):
    """An error the user can fix; the CLI prints it without a traceback.

    ``fields`` names the offending keys (dotted paths, e.g. ``budget.epochs``) when the error
    is about a document's content, so a gRPC server can report them as field violations.
    """

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


def shown(value: Any) -> str:
    """``repr(value)``, at most a few hundred characters whatever ``value`` is."""
    return _SHOWN.repr(value)


def clipped(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, saying how much was cut.

    gRPC carries a status message (and its details) in trailing metadata, which clients refuse
    above 8-16 KiB; a message quoting a long input must stay under that.
    """
    raw = text.encode(errors="replace")  # a lone surrogate cannot travel either
    if len(raw) <= max_bytes:
        return raw.decode()
    kept = raw[: max_bytes - 40].decode(errors="ignore")
    return f"{kept} ... ({len(raw) - len(kept.encode())} more bytes)"


def error_fields(exc: ValidationError) -> tuple[str, ...]:
    """The dotted key path of every problem in ``exc``, in order, without repeats."""
    paths = (".".join(str(p) for p in err["loc"]) or "(top level)" for err in exc.errors())
    return tuple(dict.fromkeys(paths))


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One line per problem: ``where: key.path: message (got value)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        quoted = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {shown(got)})"
        lines.append(f"{where}: {loc}: {msg}{quoted}")
    return "\n".join(lines)
