"""Training candidates on Ray actors, one actor per candidate.

An actor trains with the same ``train_recipe`` as a local run (mace_run_train in a child of
the actor's worker), on a GPU when Ray gave it one. Only small things cross the wire: the
recipe, paths in the shared run folder, and a summary back; the model stays on the shared
folder. A worker lost once is restarted and the training retried (``max_restarts``,
``max_task_retries``); a second loss, or a killed actor, fails the candidate with its cause.

Each actor is killed once its candidate has trained: an actor holds its CPUs and GPUs for as
long as it lives, and the MD tasks that score the candidate need them next.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.queue import Empty, Queue

from mlipilot.campaign.candidates import CandidateJob, TrainedModel, TrainProgress
from mlipilot.code_mode.repo import ProgramRepo
from mlipilot.code_mode.sandbox_models import SandboxLimits
from mlipilot.code_mode.trainer import program_job, sandbox_limits, train_program
from mlipilot.config import RayResources
from mlipilot.ledger import utc_now
from mlipilot.ray_runtime import NAMESPACE
from mlipilot.recipe import Recipe
from mlipilot.training.trainer import EpochRecord, TrainingBudget, TrainingOutcome, train_recipe


@ray.remote(max_restarts=1, max_task_retries=1)
class TrainerActor:
    """Trains one recipe at a time; its progress goes to a shared Ray queue."""

    def train(self, request: dict[str, Any], progress: Queue) -> dict[str, Any]:
        work_dir = Path(request["work_dir"])
        retried = (work_dir / "train.log").exists()  # a lost worker's attempt left its log
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        name = request["candidate"]

        def report(done: int, total: int, record: EpochRecord) -> None:
            progress.put_nowait((name, done, total, record.model_dump()))

        started = utc_now()
        if "program_dir" in request:  # code mode: the candidate's own program, sandboxed here
            if retried:  # a lost attempt's output would make the sandbox refuse to start
                shutil.rmtree(work_dir / "out", ignore_errors=True)
            outcome = train_program(
                Path(request["program_dir"]),
                request["program_job"],
                Path(request["train_file"]),
                work_dir,
                SandboxLimits.model_validate(request["limits"]),
                report,
            )
        else:
            outcome = train_recipe(
                Recipe.model_validate(request["recipe"]),
                train_file=Path(request["train_file"]),
                atomic_numbers=request["atomic_numbers"],
                work_dir=work_dir,
                budget=TrainingBudget.model_validate(request["budget"]),
                progress=report,
                device=device,
                threads=request["threads"],
            )
        return {
            "outcome": outcome.model_dump(mode="json"),
            "started_at": started,
            "finished_at": utc_now(),
            "detail": {
                "device": device,
                "node": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(),
                "retried": retried,
            },
        }


class RayTrainerPool:
    """The campaign's trainer actors, one per candidate while it trains."""

    def __init__(
        self,
        campaign_id: str,
        train_file: Path,
        atomic_numbers: list[int],
        resources: RayResources,
        threads: int | None,
        program: ProgramRepo | None = None,
    ) -> None:
        self.campaign_id = campaign_id
        self.program = program  # code mode: each candidate trains its own program
        self.train_file = train_file
        self.atomic_numbers = atomic_numbers
        self.resources = resources
        self.threads = threads
        self.progress = Queue(actor_options={"num_cpus": 0, "namespace": NAMESPACE})
        self._actors: dict[str, Any] = {}  # by candidate, while it trains
        self._lock = threading.Lock()

    def actor_name(self, candidate: str) -> str:
        """Its name in the ``mlipilot`` namespace, for operators (and tests) to find it."""
        return f"trainer-{self.campaign_id}-{candidate}"

    def train(
        self, job: CandidateJob, budget: TrainingBudget, progress: TrainProgress
    ) -> TrainedModel:
        del progress  # actors post progress to the shared queue; poll() hands it on
        request = {
            "candidate": job.name,
            "recipe": job.recipe.model_dump(),
            "train_file": str(self.train_file),
            "atomic_numbers": self.atomic_numbers,
            "work_dir": str(job.work_dir),
            "budget": budget.model_dump(),
            "threads": self.threads,
        }
        if self.program is not None:
            # Materialized here, on the shared run folder: the worker needs no repository.
            program_dir = self.program.materialize(
                job.proposal.diff, job.work_dir / "program", job.base_commit
            )
            request |= {
                "program_dir": str(program_dir),
                "program_job": program_job(program_dir, job.recipe, budget.epochs),
                "limits": sandbox_limits(None, budget, self.threads or 1).model_dump(),
            }
        dispatched, t0 = utc_now(), time.monotonic()
        actor = TrainerActor.options(
            name=self.actor_name(job.name),
            namespace=NAMESPACE,
            num_cpus=self.resources.num_cpus,
            num_gpus=self.resources.num_gpus,
        ).remote()
        with self._lock:
            self._actors[job.name] = actor
        try:
            reply = ray.get(actor.train.remote(request, self.progress))
        except RayError as exc:
            return _lost(job, dispatched, time.monotonic() - t0, exc)
        finally:
            with self._lock:
                self._actors.pop(job.name, None)
            ray.kill(actor)  # frees its CPUs/GPUs for the scoring tasks
        return TrainedModel(
            outcome=TrainingOutcome.model_validate(reply["outcome"]),
            dispatched_at=dispatched,
            started_at=reply["started_at"],
            finished_at=reply["finished_at"],
            detail=reply["detail"],
        )

    def poll(self) -> list[tuple[str, int, int, EpochRecord]]:
        try:
            items = self.progress.get_nowait_batch(self.progress.qsize())
        except Empty:
            return []
        return [(n, d, t, EpochRecord.model_validate(r)) for n, d, t, r in items]

    def cancel_all(self) -> None:
        with self._lock:
            actors = list(self._actors.values())
        for actor in actors:
            ray.kill(actor, no_restart=True)  # the training child dies with it (PDEATHSIG)

    def close(self) -> None:
        self.cancel_all()
        ray.kill(self.progress.actor)


def _lost(job: CandidateJob, dispatched: str, wall: float, exc: RayError) -> TrainedModel:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    outcome = TrainingOutcome(
        status="failed",
        cause=f"the trainer actor died ({type(exc).__name__}): {first_line}",
        wall_s=wall,
        log_path=job.work_dir / "train.log",
        command=[],
    )
    return TrainedModel(outcome, dispatched, dispatched, utc_now(), {"lost": True})
