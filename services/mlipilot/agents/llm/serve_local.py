"""A real OpenAI-compatible model server on this machine, for ``agent: {kind: llm}``.

    python -m mlipilot.agents.llm.serve_local install   # once (`make llm-local` does both)
    python -m mlipilot.agents.llm.serve_local serve     # http://127.0.0.1:8765/v1

Models (``--model``, local_models.py): ``qwen`` (default), Qwen2.5-Coder-1.5B-Instruct, a real
tool-calling model; ``smollm2``, SmolLM2-135M, tiny and without a tool template. Each is a GGUF
shipped in PyPI wheels, checked by sha256; nothing comes from a model hub.

Engines (``--engine``): ``llama.cpp`` (default), its ``llama-server`` built from source
(llama_cpp_server.py), serving the GGUF as it is; ``vllm``, vLLM's CPU build on the model
dequantized to bf16 (vllm_server.py). Both parse Qwen's ``<tool_call>`` blocks into OpenAI
tool calls. On this 2-core CPU, llama.cpp generates ~3x faster (11 against 3.5 tokens/s) and
keeps a conversation's prompt cached between turns; see the README for the measurements.

Everything lives under ``~/.cache/mlipilot-llm`` (``MLIPILOT_LLM_HOME`` moves it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import httpx

from mlipilot.agents.llm import llama_cpp_server, vllm_server
from mlipilot.agents.llm.local_models import MODELS, LocalModel, assemble, download_wheels, model

ENGINES = ("llama.cpp", "vllm")
DEFAULT_MODEL = "qwen"
DEFAULT_ENGINE = "llama.cpp"
DEFAULT_PORT = 8765
# Qwen's template as its GGUF ships it shows the model a call in doubled braces
# ({{"name": ...}}), which the model then copies, without the <tool_call> tags the parsers
# need. This copy has the single braces of Qwen's own template; nothing else differs.
TEMPLATES = {"qwen": "qwen2.5-tools.jinja"}


def home() -> Path:
    return Path(os.environ.get("MLIPILOT_LLM_HOME", Path.home() / ".cache" / "mlipilot-llm"))


def gguf_path(spec: LocalModel) -> Path:
    return home() / "models" / spec.gguf


def template_path(spec: LocalModel) -> Path | None:
    name = TEMPLATES.get(spec.key)
    if name is None:
        return None
    return Path(str(resources.files("mlipilot.agents.llm") / "templates" / name))


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def install(spec: LocalModel, engine: str) -> None:
    """The model's checked GGUF, then the engine (skips what is there)."""
    gguf = assemble(spec, download_wheels(spec, home() / "wheels"), gguf_path(spec))
    print(f"model: {gguf} (sha256 {spec.sha256[:16]}..., licence {spec.license})", flush=True)
    if engine == "llama.cpp":
        llama_cpp_server.build(home())
    else:
        vllm_server.install(home(), gguf, spec.served_name)
    print(f"ready: `serve --model {spec.key} --engine {engine}`", flush=True)


def installed(spec: LocalModel, engine: str) -> bool:
    if engine == "llama.cpp":
        return llama_cpp_server.binary(home()).exists() and gguf_path(spec).exists()
    return vllm_server.ready(home(), spec.served_name)


def server_command(
    spec: LocalModel, engine: str = DEFAULT_ENGINE, port: int = DEFAULT_PORT
) -> tuple[list[str], dict[str, str]]:
    """The server's command line and environment, serving ``spec`` on 127.0.0.1:``port``."""
    env = dict(os.environ)
    if engine == "llama.cpp":
        cmd = llama_cpp_server.command(
            home(), gguf_path(spec), spec.served_name, port, template_path(spec), threads()
        )
        return cmd, env
    # vLLM's CPU backend uses one thread unless told (FACTS.md).
    env["OMP_NUM_THREADS"] = str(threads())
    fraction = vllm_server.MEMORY_FRACTION.get(spec.key, 0.35)
    return vllm_server.command(home(), spec.served_name, port, template_path(spec), fraction), env


def wait_until_serving(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until ``url``/models answers 200 (llama.cpp answers 503 while it loads); an error when
    the server dies or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the model server exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/models", timeout=5).is_success:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the model server did not answer at {url} within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlipilot.agents.llm.serve_local")
    parser.add_argument("action", choices=["install", "serve"])
    parser.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL)
    parser.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    spec = model(args.model)
    if args.action == "install":
        install(spec, args.engine)
        return
    if not installed(spec, args.engine):
        sys.exit(
            f"{spec.served_name} on {args.engine} is not installed under {home()}: run "
            f"`install --model {args.model} --engine {args.engine}` first"
        )
    cmd, env = server_command(spec, args.engine, args.port)
    print(
        f"serving {spec.served_name} ({args.engine}) at http://127.0.0.1:{args.port}/v1; "
        f"agent: model {spec.served_name}, tool_mode {spec.tool_mode}",
        flush=True,
    )
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
