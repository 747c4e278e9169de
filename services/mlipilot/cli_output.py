"""How every ``mlipilot`` command reports an error the user can fix: one red line, exit 2
(or another code, where a script must tell a finding from a usage error)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape


def fail(exc: Exception, code: int = 2) -> NoReturn:
    # escape: a message quotes user input, and "[/]" or "[red]" in it is not Rich markup
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(code=code)
