"""A campaign's results as files to stream (``FetchArtifact``), on both sides of the wire.

Server: each artifact becomes one file in a private temporary folder, then chunks: the report
(built from the run folder, as ``mlipilot report`` does, packed as a deterministic tar.gz of
``report.html`` and ``report/``), the best model (the incumbent's model package: configuration
and tensors; the server never sends a pickle) or the ledger (SQLite's online backup: a
consistent copy while the campaign writes). A file over the cap is refused before a byte goes.

Client: the chunks are written to a temporary file, checked against the size and sha256 the
first chunk announced (and the client's own cap), then moved into place. A report is unpacked
with tarfile's ``data`` filter (no absolute paths, no ``..``, no links out, no devices); a
model package is opened with the allow-listed reader before it is kept, and written beside it
as a MACE file for the user.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import sqlite3
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlipilot.errors import MlipilotError
from mlipilot.v1 import orchestrator_pb2

CHUNK_BYTES = 1 << 20
MAX_ARTIFACT_BYTES = 256 << 20  # the default cap, both sides
NAMES: dict[int, str] = {
    orchestrator_pb2.ARTIFACT_REPORT: "report.tar.gz",
    orchestrator_pb2.ARTIFACT_BEST_MODEL: "model-package.pt",
    orchestrator_pb2.ARTIFACT_LEDGER: "ledger.sqlite",
}
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ArtifactMissing(MlipilotError):
    """The campaign has no such result yet (no decision, no incumbent)."""


class ArtifactTooLarge(MlipilotError):
    """Over the cap."""


def prepare(run_dir: Path, artifact: int, folder: Path) -> Path:
    """The artifact of the campaign in ``run_dir`` as one file in ``folder``."""
    if artifact not in NAMES:
        raise ValueError(f"artifact: {artifact} is not a known artifact")
    out = folder / NAMES[artifact]
    if artifact == orchestrator_pb2.ARTIFACT_LEDGER:
        _backup(run_dir / "ledger.sqlite", out)
    elif artifact == orchestrator_pb2.ARTIFACT_BEST_MODEL:
        out.write_bytes(_best_package(run_dir).read_bytes())
    else:
        _pack_report(run_dir, out)
    return out


def _backup(ledger: Path, out: Path) -> None:
    source = sqlite3.connect(f"{ledger.resolve().as_uri()}?mode=ro", uri=True)
    target = sqlite3.connect(out)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def _best_package(run_dir: Path) -> Path:
    from mlipilot.model_files import PACKAGE_NAME
    from mlipilot.report import data
    from mlipilot.report.ledger_view import load_run

    try:
        view = load_run(run_dir)
    except MlipilotError as exc:
        raise ArtifactMissing(str(exc)) from exc
    best = data.header(view).best_candidate
    if best is None:
        raise ArtifactMissing(f"{run_dir.name}: no incumbent yet (nothing scored)")
    package = run_dir / "candidates" / view.trained_candidate(best) / PACKAGE_NAME
    if not package.is_file():
        raise ArtifactMissing(f"{run_dir.name}: the incumbent {best} has no model package")
    return package


def _pack_report(run_dir: Path, out: Path) -> None:
    from mlipilot.report.build import FIGURE_DIR, build_report

    try:
        page = build_report(run_dir)
    except MlipilotError as exc:
        raise ArtifactMissing(str(exc)) from exc
    members = [page, *sorted((run_dir / FIGURE_DIR).rglob("*"))]
    with (
        open(out, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        for path in members:
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(run_dir)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if path.is_file():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)


def chunks(path: Path, limit: int = MAX_ARTIFACT_BYTES) -> Iterator[orchestrator_pb2.ArtifactChunk]:
    """The file as chunks, the first with its name, size and sha256."""
    size = path.stat().st_size
    if size > limit:
        raise ArtifactTooLarge(f"{path.name}: {size} bytes, over this server's cap of {limit}")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    first = True
    with open(path, "rb") as fh:
        while True:
            block = fh.read(CHUNK_BYTES)
            if first:
                yield orchestrator_pb2.ArtifactChunk(
                    name=path.name, total_bytes=size, sha256=digest.hexdigest(), data=block
                )
                first = False
            elif block:
                yield orchestrator_pb2.ArtifactChunk(data=block)
            if not block:
                return


# --- the client's side ---------------------------------------------------------------------


def receive(
    stream: Iterator[orchestrator_pb2.ArtifactChunk],
    dest: Path,
    limit: int = MAX_ARTIFACT_BYTES,
) -> Path:
    """Write the streamed file into the folder ``dest``, checked; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    first = next(stream, None)
    if first is None:
        raise MlipilotError("the server sent no artifact")
    if not _PLAIN_NAME.match(first.name) or first.name not in NAMES.values():
        raise MlipilotError(f"the server named the artifact {first.name[:100]!r}: refused")
    if not 0 <= first.total_bytes <= limit:
        raise MlipilotError(f"{first.name}: {first.total_bytes} bytes, over the cap of {limit}")
    digest = hashlib.sha256()
    received = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{first.name}.", dir=dest)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in _chained(first, stream):
                received += len(chunk.data)
                if received > first.total_bytes:
                    raise MlipilotError(f"{first.name}: more bytes than the server announced")
                digest.update(chunk.data)
                out.write(chunk.data)
        if received != first.total_bytes or digest.hexdigest() != first.sha256:
            raise MlipilotError(
                f"{first.name}: received {received} bytes with sha256 {digest.hexdigest()}, "
                f"announced {first.total_bytes} with {first.sha256}"
            )
        final = dest / first.name
        tmp.replace(final)
        return final
    finally:
        tmp.unlink(missing_ok=True)


def _chained(
    first: orchestrator_pb2.ArtifactChunk, rest: Iterator[orchestrator_pb2.ArtifactChunk]
) -> Iterator[orchestrator_pb2.ArtifactChunk]:
    yield first
    yield from rest


def unpack_report(archive: Path, dest: Path) -> Path:
    """The report's page and figures unpacked into ``dest`` (links, devices and paths out of
    it refused by tarfile's ``data`` filter); the page's path."""
    with tarfile.open(archive, mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    page = dest / "report.html"
    if not page.is_file():
        raise MlipilotError(f"{archive}: no report.html in the report")
    return page


def keep_model(package: Path) -> Path:
    """A received model package, opened with the allow-listed reader (a file that is not one is
    refused and removed) and written beside it as a MACE file; the MACE file's path."""
    from mlipilot.model_files import write_mace_file
    from mlipilot.model_files.config import ModelFileError

    try:
        write_mace_file(package, package.with_name("best.model"))
    except ModelFileError:
        package.unlink(missing_ok=True)
        raise
    return package.with_name("best.model")
