"""Error messages that say which file, key and value to change."""

from __future__ import annotations

from pydantic import ValidationError


class MlipilotError(ValueError):
    """An error the user can fix; the CLI prints it without a traceback.

    ``fields`` names the offending keys (dotted paths, e.g. ``budget.epochs``) when the error
    is about a document's content, so a gRPC server can report them as field violations.
    """

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


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
        shown = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{where}: {loc}: {msg}{shown}")
    return "\n".join(lines)
