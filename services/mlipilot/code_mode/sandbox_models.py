"""The vocabulary the sandbox and its helpers share: the limits one candidate's program runs
under, and what the run came to.

Kept apart from ``sandbox`` so that the modules it imports, ``cgroups`` (which sets and reads
the process and memory limits) and ``leftovers`` (which takes the outputs out), can use them
too without an import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal[
    "ok",
    "syntax_error",
    "exception",
    "timeout",
    "killed",
    "no_model",
    "output_refused",  # exited 0, but model.json or weights.pt is not a regular file or too big
    "cancelled",
]
Enforcer = Literal["cgroup-v1", "cgroup-v2", "rlimit"]
LimitHit = Literal["processes", "memory"]


class SandboxLimits(BaseModel):
    """Resources one candidate's program may use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_seconds: float = Field(3600.0, gt=0, description="then the process group is killed")
    cpu_seconds: int = Field(4 * 3600, ge=1, description="RLIMIT_CPU of each process")
    memory_bytes: int | None = Field(
        8 << 30,
        ge=256 << 20,
        description="RLIMIT_AS of each process and, where a cgroup is writable, the memory of "
        "all its processes together (no swap); None for none (CUDA reserves vast address space)",
    )
    max_processes: int = Field(
        256,
        ge=16,
        le=1 << 16,
        description="processes and threads at once: a pids cgroup, else RLIMIT_NPROC "
        "(which the kernel does not enforce for uid 0)",
    )
    file_bytes: int = Field(1 << 30, ge=1 << 20, description="RLIMIT_FSIZE: largest file")
    weights_bytes: int = Field(
        2 << 30, ge=1 << 20, description="the largest weights.pt taken out of the sandbox"
    )
    tmp_bytes: int = Field(256 << 20, ge=1 << 20, description="size of the private /tmp")
    threads: int = Field(1, ge=1, le=256, description="OMP/MKL/OpenBLAS threads")
    log_bytes: int = Field(8 << 20, ge=4096, description="program.log keeps this much")
    log_tail_lines: int = Field(40, ge=1, le=1000)


class SandboxResult(BaseModel):
    status: Status
    returncode: int | None  # None when the program never ran (syntax error)
    seconds: float
    log_tail: str  # the last lines of combined stdout and stderr
    log_path: Path
    out_dir: Path
    limits_enforced_by: Enforcer | None = None  # None when nothing ran
    # False: no cgroup and uid 0, which the kernel exempts from RLIMIT_NPROC; None: nothing ran
    process_limit_enforced: bool | None = None
    limits_hit: list[LimitHit] = Field(default_factory=list)  # as the cgroup counted them
