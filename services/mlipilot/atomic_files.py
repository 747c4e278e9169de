"""Files that are either the old version or the new one, never half of the new one.

A crash (SIGKILL, full disk) while writing leaves the old file and no stray temporary: data
sets, manifests and labels are read back by later runs and resumes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; it replaces ``path`` when the block succeeds."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    with replaced_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
