"""Moving files by URI: a shared folder (``file:///...``) or any fsspec storage (``s3://...``).

Models and MD traces travel between services this way, never inside a gRPC message or an
agent's context. Plain paths are taken as local files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import fsspec

from mlipilot.errors import MlipilotError


def fetch(uri: str, dest: Path, what: str) -> Path:
    """Copy the file at ``uri`` to ``dest``; a missing or unreadable one names ``what``."""
    try:
        with fsspec.open(uri, "rb") as src:
            dest.write_bytes(src.read())
    # Not only OSError/ValueError/ImportError (no driver for the scheme): fsspec's backends
    # raise their own types for a bad URI (zipfile.BadZipFile for zip://x::junk,
    # tarfile.ReadError, TypeError for a URI lacking what a backend needs).
    except Exception as exc:
        raise MlipilotError(f"{what}: cannot read {uri}: {type(exc).__name__}: {exc}") from exc
    return dest


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish(local_dir: Path, uri: str) -> None:
    """Copy every file under ``local_dir`` to the folder at ``uri``, keeping relative paths."""
    fs, root = fsspec.core.url_to_fs(uri)
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        target = f"{root.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), target)
