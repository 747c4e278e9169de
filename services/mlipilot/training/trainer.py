"""Train one recipe with mace-torch, for real, under a fixed budget.

mace_run_train runs in a child process: it sets process-wide state (default dtype, logging,
environment) that must not leak into the orchestrator, and a child can be killed when it
overruns its wall-clock budget. Its log is parsed as it streams so progress and the training
curve are known while it runs.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from mlipilot.model_files import PACKAGE_NAME
from mlipilot.recipe import Recipe
from mlipilot.supervised import SIGKILL_HINT, run_supervised, signal_name
from mlipilot.training.mace_args import to_mace_args

_EPOCH_LINE = re.compile(r"(Initial|Epoch (\d+)):.*?loss=\s*(\S+?),(.*)")
_EXCEPTION_LINE = re.compile(r"^\w+(Error|Exception): .+")
_METRIC = re.compile(r"(\w+)=\s*([-+0-9.eEinfa]+)\s*(meV(?: / A)?)?")

ProgressFn = Callable[[int, int, "EpochRecord"], None]


TrainingStatus = Literal["ok", "failed", "timeout", "cancelled"]


class EpochRecord(BaseModel):
    epoch: int  # -1 is the evaluation before training
    loss: float
    valid: dict[str, float]  # validation errors as mace logs them (meV units)


class TrainingOutcome(BaseModel):
    status: TrainingStatus
    cause: str | None = None
    model_path: Path | None = None
    curve: list[EpochRecord] = []
    wall_s: float
    log_path: Path
    command: list[str]


class TrainingBudget(BaseModel):
    epochs: int
    max_seconds: float


def parse_epoch_line(line: str) -> EpochRecord | None:
    m = _EPOCH_LINE.search(line)
    if not m:
        return None
    epoch = -1 if m.group(1) == "Initial" else int(m.group(2))
    valid = {k: float(v) for k, v, _unit in _METRIC.findall(m.group(4))}
    return EpochRecord(epoch=epoch, loss=float(m.group(3)), valid=valid)


def train_recipe(
    recipe: Recipe,
    *,
    train_file: Path,
    atomic_numbers: Sequence[int],
    work_dir: Path,
    budget: TrainingBudget,
    progress: ProgressFn | None = None,
    device: str = "cpu",
    threads: int | None = None,
    cancel: threading.Event | None = None,
) -> TrainingOutcome:
    """Train ``recipe`` on ``train_file``; never raises for a failed run, reports it.

    Setting ``cancel`` kills the child within a fraction of a second (status "cancelled").
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "train.log"
    package = work_dir / PACKAGE_NAME
    cmd = [
        sys.executable,
        "-m",
        "mlipilot.training.mace_entry",  # mace_run_train, then its model as a package
        str(package),
        *to_mace_args(
            recipe,
            train_file=train_file,
            work_dir=work_dir / "mace",
            epochs=budget.epochs,
            atomic_numbers=atomic_numbers,
            device=device,
        ),
    ]
    curve: list[EpochRecord] = []
    last_error = ""  # the child's final exception line, for the cause

    def on_line(line: str) -> bool:
        nonlocal last_error
        if _EXCEPTION_LINE.match(line):
            last_error = line.strip()
        record = parse_epoch_line(line)
        if record is None:
            return False
        curve.append(record)
        if progress and record.epoch >= 0:
            progress(record.epoch + 1, budget.epochs, record)
        return not math.isfinite(record.loss)  # stop: nothing good comes after a NaN

    # Unbuffered, or mace's log lines arrive only when the run ends.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads is not None:  # two busy 2-thread torch processes on 2 cores crawl
        env["OMP_NUM_THREADS"] = str(threads)
    ran = run_supervised(
        _dies_with_this_process(cmd),
        log_path,
        wall_seconds=budget.max_seconds,
        cancel=cancel,
        on_line=on_line,
        env=env,
        header="$ " + " ".join(cmd) + "\n",
    )
    wall = ran.seconds
    status, cause, model = _judge(ran.returncode, ran.ended, curve, package, budget)
    if cancel is not None and cancel.is_set() and status != "ok":
        status, cause, model = "cancelled", "cancelled while training", None
    if status == "failed" and last_error and cause:
        cause = f"{cause}: {last_error}"
    if cause:
        with log_path.open("a") as log:
            log.write(f"\nmlipilot: training {status}: {cause}\n")
    return TrainingOutcome(
        status=status,
        cause=cause,
        model_path=model,
        curve=curve,
        wall_s=wall,
        log_path=log_path,
        command=cmd,
    )


# Run by the child's fresh interpreter before it becomes mace_run_train: ask Linux to SIGKILL it
# when its parent dies (a killed Ray actor, a crashed server), so no orphaned training keeps
# cores or a GPU busy. Done after exec rather than in a preexec_fn, which is unsafe in a
# process with threads (gRPC, Ray). The parent check closes the race with an early death.
_GUARD = (
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); "  # 1: PR_SET_PDEATHSIG, 9: SIGKILL
    "os.getppid() == int(sys.argv[1]) or sys.exit(137); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def _dies_with_this_process(cmd: list[str]) -> list[str]:
    """``cmd`` (a ``python -m ...`` line) so that its process dies when this one does."""
    if sys.platform != "linux":
        return cmd
    return [sys.executable, "-c", _GUARD, str(os.getpid()), *cmd[1:]]


def _judge(
    returncode: int, ended: str, curve: list[EpochRecord], package: Path, budget: TrainingBudget
) -> tuple[TrainingStatus, str | None, Path | None]:
    if curve and not math.isfinite(curve[-1].loss):
        return "failed", f"non-finite loss ({curve[-1].loss}) at epoch {curve[-1].epoch}", None
    if ended == "cancelled":
        return "cancelled", "cancelled while training", None
    if ended == "timeout":
        return "timeout", f"over the wall-clock budget of {budget.max_seconds:.0f} s", None
    if returncode < 0:
        name = signal_name(-returncode)
        hint = f" ({SIGKILL_HINT})" if name == "SIGKILL" else ""
        return "failed", f"mace_run_train was killed by {name}{hint}; see train.log", None
    if returncode != 0:
        return "failed", f"mace_run_train exited with code {returncode} (see train.log)", None
    if package.is_file():
        return "ok", None, package
    return "failed", "mace_run_train finished but wrote no model file", None
