"""Moving files by URI, only under the roots a service's operator configured.

Models, test splits and MD traces travel between services by URI (a shared folder,
``file:///...``, or object storage, ``s3://bucket/...``), never inside a gRPC message. A URI in
a request is data, not a capability: the scorecard service reads only under its ``--read-root``
folders and prefixes and writes only under its ``--write-root`` ones. Everything else is
refused before any I/O: other schemes (fsspec's ``data:`` URI is a whole file inside the URI,
``memory:``, archives, ``::`` chains), paths outside the roots (symlinks are resolved first),
and anything that is not a regular file (``/dev/zero``, a FIFO). Reads are size-capped.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from mlipilot.errors import MlipilotError, shown

# Object stores a root may name (fsspec drivers, installed separately: s3fs, gcsfs, adlfs).
OBJECT_STORES = frozenset({"s3", "gs", "gcs", "az", "abfs", "abfss"})
MAX_URI_CHARS = 4096
_CHUNK = 1 << 20


class UriRefused(MlipilotError):
    """A URI this service will not touch; ``kind`` says whether it is malformed ("invalid")
    or well-formed but outside what the operator allowed ("denied")."""

    def __init__(self, message: str, kind: Literal["invalid", "denied"]) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Location:
    """A checked place: ``path`` is a resolved absolute path (file) or ``bucket/key``."""

    scheme: str
    path: str
    uri: str  # as the caller wrote it, for messages


@dataclass(frozen=True)
class Root:
    scheme: str
    prefix: str  # resolved absolute folder (file) or bucket/prefix, without a trailing /

    @classmethod
    def parse(cls, text: str | Path) -> Root:
        """A root as an operator writes it: a local folder, or ``s3://bucket/prefix``."""
        text = str(text)
        parts = urlsplit(text)
        if parts.scheme in OBJECT_STORES:
            prefix = posixpath.normpath(f"{parts.netloc}/{parts.path.lstrip('/')}").rstrip("/")
            if not parts.netloc or prefix.startswith("..") or "::" in text:
                raise MlipilotError(f"root {text!r}: expected {parts.scheme}://bucket/prefix")
            return cls(parts.scheme, prefix)
        if parts.scheme not in ("", "file"):
            raise MlipilotError(
                f"root {text!r}: a local folder, file:///folder or an object store "
                f"({', '.join(sorted(OBJECT_STORES))}), nothing else"
            )
        folder = unquote(parts.path) if parts.scheme == "file" else text
        return cls("file", os.path.realpath(os.path.abspath(folder)))

    def holds(self, scheme: str, path: str) -> bool:
        if scheme != self.scheme:
            return False
        return path == self.prefix or path.startswith(self.prefix.rstrip("/") + "/")

    def __str__(self) -> str:
        return self.prefix if self.scheme == "file" else f"{self.scheme}://{self.prefix}"


class UriPolicy:
    """The roots a service reads under and writes under (server flags, chart values)."""

    def __init__(self, read: Sequence[str | Path], write: Sequence[str | Path]) -> None:
        self.read = [Root.parse(r) for r in read]
        self.write = [Root.parse(r) for r in write]

    def readable(self, uri: str, field: str) -> Location:
        return self._checked(uri, field, self.read, "read", "--read-root")

    def writable(self, uri: str, field: str) -> Location:
        return self._checked(uri, field, self.write, "write", "--write-root")

    def _checked(self, uri: str, field: str, roots: list[Root], verb: str, flag: str) -> Location:
        location = parse_uri(uri, field)
        if not any(root.holds(location.scheme, location.path) for root in roots):
            raise UriRefused(
                f"{field}: {shown(uri)} is outside the places this service may {verb} "
                f"(its {flag} list)",
                "denied",
            )
        return location


def parse_uri(uri: str, field: str) -> Location:
    """A request's URI as a Location, or UriRefused("invalid") naming ``field``."""

    def invalid(why: str) -> UriRefused:
        return UriRefused(f"{field}: {shown(uri)}: {why}", "invalid")

    if len(uri) > MAX_URI_CHARS or "\x00" in uri:
        raise invalid(f"not a usable URI (at most {MAX_URI_CHARS} characters, no NUL)")
    if "::" in uri:
        raise invalid("chained URIs (fsspec's '::') are not allowed")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL" for s3://[
        raise invalid(str(exc)) from None
    if parts.scheme in OBJECT_STORES:
        key = f"{parts.netloc}/{parts.path.lstrip('/')}"
        if not parts.netloc or ".." in key.split("/") or parts.query or parts.fragment:
            raise invalid(f"expected {parts.scheme}://bucket/key without '..', ? or #")
        return Location(parts.scheme, posixpath.normpath(key), uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise invalid("expected file:///absolute/path")
        path = unquote(parts.path)
    elif parts.scheme == "":
        path = uri
    else:
        allowed = ", ".join(["file", *sorted(OBJECT_STORES)])
        raise invalid(f"scheme {parts.scheme!r} is not allowed; allowed: {allowed}")
    if not path.startswith("/"):
        raise invalid("expected an absolute path or a file:/// URI")
    return Location("file", os.path.realpath(path), uri)


def fetch(location: Location, dest: Path, field: str, max_bytes: int) -> Path:
    """Copy the regular file at ``location`` to ``dest``, refusing one over ``max_bytes``."""
    if location.scheme == "file":
        _fetch_local(location, dest, field, max_bytes)
    else:
        _fetch_remote(location, dest, field, max_bytes)
    return dest


def _fetch_local(location: Location, dest: Path, field: str, max_bytes: int) -> None:
    try:
        fd = os.open(location.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise MlipilotError(f"{field}: cannot read {location.uri}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise MlipilotError(f"{field}: {location.uri} is not a regular file")
        _copy_capped(src, dest, field, location.uri, max_bytes)


def _fetch_remote(location: Location, dest: Path, field: str, max_bytes: int) -> None:
    import fsspec

    try:
        fs = fsspec.filesystem(location.scheme)
        info = fs.info(location.path)
        if info.get("type") != "file":
            raise MlipilotError(f"{field}: {location.uri} is not a file")
        with fs.open(location.path, "rb") as src:
            _copy_capped(src, dest, field, location.uri, max_bytes)
    except MlipilotError:
        raise
    except Exception as exc:  # the driver's own errors: missing, denied, no such driver
        raise MlipilotError(
            f"{field}: cannot read {location.uri}: {type(exc).__name__}: {exc}"
        ) from None


def _copy_capped(src, dest: Path, field: str, uri: str, max_bytes: int) -> None:
    copied = 0
    with dest.open("wb") as out:
        while chunk := src.read(_CHUNK):
            copied += len(chunk)
            if copied > max_bytes:
                raise MlipilotError(f"{field}: {uri} is larger than the {max_bytes} bytes allowed")
            out.write(chunk)


def publish(local_dir: Path, location: Location) -> None:
    """Copy every file under ``local_dir`` to the folder at ``location``, keeping relative
    paths. Local targets are written without following links: a link planted in the target
    folder cannot send a write elsewhere."""
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    if location.scheme != "file":
        import fsspec

        fs = fsspec.filesystem(location.scheme)
        for path in files:
            target = f"{location.path}/{path.relative_to(local_dir).as_posix()}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), target)
        return
    root = Path(location.path)
    for path in files:
        relative = path.relative_to(local_dir)
        folder = root.joinpath(*relative.parts[:-1])
        folder.mkdir(parents=True, exist_ok=True)
        if os.path.realpath(folder) != str(folder):
            raise MlipilotError(f"artifacts_uri: {location.uri}: {relative.parent} is a link")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(folder / relative.name, flags, 0o644)
        with os.fdopen(fd, "wb") as out, path.open("rb") as src:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
