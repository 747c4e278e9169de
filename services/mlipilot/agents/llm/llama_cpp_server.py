"""llama.cpp's OpenAI-compatible server (``llama-server``), built here from source.

No registry ships a llama-server binary, but the sdist of ``llama-cpp-python`` (PyPI) vendors
llama.cpp's whole source tree. ``build`` downloads that sdist (pinned and checked by sha256),
unpacks only ``vendor/llama.cpp`` and builds the one ``llama-server`` target with cmake: about
6.5 min on 2 cores, needing cmake and a C++ compiler (Debian: ``apt-get install cmake g++``).
The web UI is left out and nothing is fetched at build time (``LLAMA_USE_PREBUILT_UI=OFF``,
no curl, no OpenSSL).

It serves the GGUF file as it is (no conversion), with the chat template's tool-call parsing
(``--jinja``) and prompt caching across a conversation's turns.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from mlipilot.errors import MlipilotError

SDIST = "llama-cpp-python==0.3.36"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
VENDORED = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # else it fetches the web UI at configure time
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary
    "-DGGML_NATIVE=ON",  # this CPU's instructions (AVX-512, AMX where there)
)
CONTEXT_TOKENS = 16384  # a conversation of 8 turns stays well inside this


def binary(home: Path) -> Path:
    return home / "llama.cpp" / "llama-server"


def build(home: Path, jobs: int | None = None) -> Path:
    """``llama-server`` under ``home`` (built once; an existing binary is kept)."""
    out = binary(home)
    if out.exists():
        return out
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise MlipilotError(
            f"building llama.cpp's server needs {' and '.join(missing)} "
            "(Debian: sudo apt-get install cmake g++)"
        )
    src_dir = home / "src"
    sdist = src_dir / SDIST_FILE
    if not sdist.exists():
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:"]
        subprocess.run([*cmd, "-d", str(src_dir), SDIST], check=True)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise MlipilotError(f"{sdist}: sha256 {digest}, not the pinned {SDIST_SHA256}")
    tree = src_dir / "llama.cpp"
    if not tree.exists():
        _unpack_vendored(sdist, tree)
    build_dir = src_dir / "build"
    _run("cmake", "-S", tree, "-B", build_dir, *CMAKE_OPTIONS)
    jobs = jobs or os.cpu_count() or 1
    _run("cmake", "--build", build_dir, "--target", "llama-server", "-j", str(jobs))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build_dir / "bin" / "llama-server", out)
    return out


def _unpack_vendored(sdist: Path, tree: Path) -> None:
    """Only the vendored llama.cpp, through tarfile's "data" filter (no links out, no devices)."""
    partial = tree.with_name(tree.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            if m.name.startswith(VENDORED):
                m.name = m.name[len(VENDORED) :]
                members.append(m)
        if not members:
            raise MlipilotError(f"{sdist}: no {VENDORED} inside")
        tar.extractall(partial, members=members, filter="data")
    os.replace(partial, tree)


def _run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True)


def command(
    home: Path, gguf: Path, served_name: str, port: int, template: Path | None, threads: int
) -> list[str]:
    """``llama-server`` for ``gguf`` on 127.0.0.1:``port``, listed as ``served_name``."""
    cmd = [
        str(binary(home)),
        "--model",
        str(gguf),
        "--alias",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--jinja",  # the chat template renders tools and its tool calls are parsed
        "--ctx-size",
        str(CONTEXT_TOKENS),
        "--threads",
        str(threads),
        "--parallel",
        "1",  # one agent at a time; its whole context in one slot
        "--no-webui",
    ]
    if template is not None:
        cmd += ["--chat-template-file", str(template)]
    return cmd
