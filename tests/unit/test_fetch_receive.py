"""What a client does with an artifact stream it did not choose: a hostile or broken server
can lie about the name, the size or the hash, or send a report archive that climbs out of its
folder. Each lie is refused and leaves nothing behind."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from mlipilot.errors import MlipilotError
from mlipilot.rpc import fetch
from mlipilot.v1 import orchestrator_pb2

Chunk = orchestrator_pb2.ArtifactChunk


def _stream(data: bytes, name: str = "ledger.sqlite", size: int | None = None, sha: str = ""):
    sha = sha or hashlib.sha256(data).hexdigest()
    size = len(data) if size is None else size
    yield Chunk(name=name, total_bytes=size, sha256=sha, data=data[:5])
    for i in range(5, len(data), 5):
        yield Chunk(data=data[i : i + 5])


def test_a_true_stream_is_written_whole(tmp_path: Path) -> None:
    path = fetch.receive(_stream(b"0123456789abcdef"), tmp_path)
    assert path == tmp_path / "ledger.sqlite" and path.read_bytes() == b"0123456789abcdef"


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        (_stream(b"x" * 20, sha="0" * 64), "announced"),
        (_stream(b"x" * 20, size=10), "more bytes"),
        (_stream(b"x" * 20, size=30), "announced"),
        (_stream(b"x", name="../../etc/passwd"), "refused"),
        (_stream(b"x", name="authorized_keys"), "refused"),
        (_stream(b"x" * 20, size=2**40), "cap"),
        (iter(()), "no artifact"),
    ],
)
def test_a_lying_stream_is_refused_and_leaves_nothing(tmp_path: Path, stream, words) -> None:
    with pytest.raises(MlipilotError, match=words):
        fetch.receive(stream, tmp_path / "in")
    left = list((tmp_path / "in").iterdir()) if (tmp_path / "in").exists() else []
    assert left == []  # not even the temporary file


def test_a_report_archive_cannot_climb_out_of_its_folder(tmp_path: Path) -> None:
    archive = tmp_path / "report.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(tarfile.TarError):
        fetch.unpack_report(archive, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()


def test_a_model_that_is_not_a_package_is_refused_and_removed(tmp_path: Path) -> None:
    import pickle

    from mlipilot.model_files.config import ModelFileError

    package = tmp_path / "model-package.pt"
    package.write_bytes(pickle.dumps({"not": "a package"}))
    with pytest.raises(ModelFileError):
        fetch.keep_model(package)
    assert not package.exists() and not (tmp_path / "best.model").exists()
