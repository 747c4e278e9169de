"""Code mode's trainer: the candidate's own training program, run in the sandbox.

The program is the incumbent's (the code repository's HEAD) with the candidate's diff applied,
copied into the candidate's folder. It trains on the training split alone and hands back
``model.json`` + ``weights.pt``, which the model boundary checks here and writes as the model
package the scorecard reads, so nothing the program pickled is ever unpickled outside the
sandbox.
"""

from __future__ import annotations

import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlipilot.code_mode.model_boundary import ModelBoundaryError, save_trusted_model
from mlipilot.code_mode.program_files import TEMPLATE_KNOBS, program_knobs, recipe_job
from mlipilot.code_mode.repo import ProgramRepo
from mlipilot.code_mode.sandbox import PROGRAM, run_sandboxed
from mlipilot.code_mode.sandbox_models import SandboxLimits
from mlipilot.model_files import PACKAGE_NAME
from mlipilot.recipe import Recipe
from mlipilot.training.tasks import TrainingTask
from mlipilot.training.trainer import (
    EpochRecord,
    ProgressFn,
    TrainingBudget,
    TrainingOutcome,
    TrainingStatus,
)

_EPOCH = re.compile(r"^epoch (\d+) train_loss (\S+)((?: \w+ \S+)*)\s*$")


def parse_program_epoch(line: str) -> EpochRecord | None:
    """``epoch N train_loss X key value ...`` as the template program logs it."""
    m = _EPOCH.match(line.strip())
    if m is None:
        return None
    words = m.group(3).split()
    valid = {}
    for key, value in zip(words[::2], words[1::2], strict=False):
        try:
            valid[key] = float(value)
        except ValueError:
            continue
    try:
        loss = float(m.group(2))
    except ValueError:
        return None
    return EpochRecord(epoch=int(m.group(1)), loss=loss, valid=valid)


def program_job(program_dir: Path, recipe: Recipe, epochs: int) -> dict[str, Any]:
    """What the program at ``program_dir`` is run with: the recipe's values for its knobs."""
    knobs = program_knobs((program_dir / PROGRAM).read_text()) or TEMPLATE_KNOBS
    return {**recipe_job(recipe, knobs), "epochs": epochs}


def train_program(
    program_dir: Path,
    job: dict[str, Any],
    train_file: Path,
    work_dir: Path,
    limits: SandboxLimits,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    device: str = "cpu",
) -> TrainingOutcome:
    """Run the program in the sandbox (on ``device``: ``cuda`` binds this process's GPUs in),
    then check its model at the boundary and write it as
    ``work_dir/model-package.pt``; never raises for what the program does. Here or on a
    Ray worker (training/ray_trainer.py), with ``work_dir`` on the shared run folder."""
    curve: list[EpochRecord] = []

    def on_line(line: str) -> None:
        record = parse_program_epoch(line)
        if record is not None:
            curve.append(record)
            if progress is not None:
                progress(record.epoch + 1, int(job["epochs"]), record)

    result = run_sandboxed(
        program_dir,
        job,
        train_file,
        work_dir / "out",
        limits,
        on_line=on_line,
        cancel=cancel,
        device=device,
    )
    log = work_dir / "train.log"
    log.write_text(result.log_path.read_text(errors="replace"))
    status: TrainingStatus = "ok"
    cause, model = None, None
    if result.status == "ok":
        try:
            model = save_trusted_model(result.out_dir, work_dir / PACKAGE_NAME)
        except ModelBoundaryError as exc:
            status, cause = "failed", f"the program's model does not rebuild: {exc}"
    elif result.status == "timeout":
        status, cause = "timeout", "over the wall-clock budget"
    elif result.status == "cancelled":
        status, cause = "cancelled", "cancelled while training"
    else:
        last = [ln for ln in result.log_tail.splitlines() if ln.strip()][-3:]
        status, cause = "failed", f"program {result.status}: " + " | ".join(last)
    return TrainingOutcome(
        status=status,
        cause=cause,
        model_path=model,
        curve=curve,
        wall_s=result.seconds,
        log_path=log,
        command=[str(PROGRAM), "job.json"],
    )


@dataclass(frozen=True)
class ProgramTask(TrainingTask):
    """Code mode's training task: the candidate's program (already materialized in its folder
    on the run folder, so a Ray worker needs no repository), run in the sandbox."""

    program_dir: Path
    job: dict[str, Any]  # ``program_job``: the knobs' values and the epochs
    train_file: Path
    limits: SandboxLimits

    @classmethod
    def of(
        cls,
        repo: ProgramRepo,
        name: str,
        work_dir: Path,
        diff: str | None,
        base_commit: str | None,
        recipe: Recipe,
        train_file: Path,
        budget: TrainingBudget,
        threads: int,
        limits: SandboxLimits | None = None,
    ) -> ProgramTask:
        """The incumbent's program with ``diff`` applied, written to ``work_dir/program``."""
        program_dir = repo.materialize(diff, work_dir / "program", base_commit)
        return cls(
            name=name,
            work_dir=work_dir,
            program_dir=program_dir,
            job=program_job(program_dir, recipe, budget.epochs),
            train_file=train_file,
            limits=sandbox_limits(limits, budget, threads),
        )

    def run(
        self, device: str, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> TrainingOutcome:
        return train_program(
            self.program_dir,
            self.job,
            self.train_file,
            self.work_dir,
            self.limits,
            progress,
            cancel,
            device=device,
        )

    def before_retry(self) -> None:
        # A lost attempt's output would make the sandbox refuse to start.
        shutil.rmtree(self.work_dir / "out", ignore_errors=True)

    def where(self, device: str) -> dict[str, Any]:
        return {"sandbox": "local", "device": device}


def sandbox_limits(
    base: SandboxLimits | None, budget: TrainingBudget, threads: int
) -> SandboxLimits:
    """The campaign's wall-clock budget and thread count on top of the default limits."""
    return (base or SandboxLimits()).model_copy(
        update={"wall_seconds": budget.max_seconds, "threads": threads}
    )
