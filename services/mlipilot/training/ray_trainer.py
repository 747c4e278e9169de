"""Training candidates on Ray actors, one actor per candidate.

An actor runs the same ``TrainingTask`` as a local run (a recipe: mace_run_train in a child of
the actor's worker; code mode: the candidate's program in the sandbox), on a GPU when Ray gave
it one. Only small things cross the wire: the task (a recipe, paths in the shared run folder)
and a summary back; the model stays on the shared folder. A worker lost once is restarted and
the training retried (``max_restarts``, ``max_task_retries``); a second loss, or a killed
actor, fails the candidate with its cause.

Each actor is killed once its candidate has trained: an actor holds its CPUs and GPUs for as
long as it lives, and the MD tasks that score the candidate need them next.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.queue import Empty, Queue

from mlipilot.config import RayResources
from mlipilot.ledger import utc_now
from mlipilot.ray_runtime import NAMESPACE, sized
from mlipilot.training.tasks import TrainedModel, TrainingTask
from mlipilot.training.trainer import EpochRecord, ProgressFn, TrainingOutcome


@ray.remote(max_restarts=1, max_task_retries=1)
class TrainerActor:
    """Runs one training task at a time; its progress goes to a shared Ray queue."""

    def train(self, task: TrainingTask, progress: Queue) -> dict[str, Any]:
        retried = (task.work_dir / "train.log").exists()  # a lost worker's attempt left its log
        if retried:
            task.before_retry()
        device = "cuda" if ray.get_gpu_ids() else "cpu"

        def report(done: int, total: int, record: EpochRecord) -> None:
            progress.put_nowait((task.name, done, total, record.model_dump()))

        started = utc_now()
        outcome = task.run(device, report, None)
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

    def __init__(self, campaign_id: str, resources: RayResources) -> None:
        self.campaign_id = campaign_id
        self.resources = sized(resources)
        self.progress = Queue(actor_options={"num_cpus": 0, "namespace": NAMESPACE})
        self._actors: dict[str, Any] = {}  # by candidate, while it trains
        self._cancelled: set[str] = set()  # candidates whose actor cancel_all killed
        self._lock = threading.Lock()

    def actor_name(self, candidate: str) -> str:
        """Its name in the ``mlipilot`` namespace, for operators (and tests) to find it."""
        return f"trainer-{self.campaign_id}-{candidate}"

    def train(self, task: TrainingTask, progress: ProgressFn) -> TrainedModel:
        del progress  # actors post progress to the shared queue; poll() hands it on
        dispatched, t0 = utc_now(), time.monotonic()
        actor = TrainerActor.options(
            name=self.actor_name(task.name),
            namespace=NAMESPACE,
            num_cpus=self.resources.num_cpus,
            num_gpus=self.resources.gpus,
        ).remote()
        with self._lock:
            self._actors[task.name] = actor
        try:
            reply = ray.get(actor.train.remote(task, self.progress))
        except RayError as exc:
            with self._lock:
                cancelled = task.name in self._cancelled
            return _lost(task, dispatched, time.monotonic() - t0, exc, cancelled)
        finally:
            with self._lock:
                self._actors.pop(task.name, None)
                self._cancelled.discard(task.name)
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

    def cancel(self, name: str) -> None:
        with self._lock:
            actor = self._actors.get(name)
            if actor is not None:
                self._cancelled.add(name)
        if actor is not None:
            ray.kill(actor, no_restart=True)  # the training child dies with it (PDEATHSIG)

    def cancel_all(self) -> None:
        with self._lock:
            names = list(self._actors)
        for name in names:
            self.cancel(name)

    def close(self) -> None:
        self.cancel_all()
        ray.kill(self.progress.actor)


def _lost(
    task: TrainingTask, dispatched: str, wall: float, exc: RayError, cancelled: bool
) -> TrainedModel:
    """The outcome of a training whose actor died: ``cancelled`` when ``cancel_all`` killed it
    (as a local trainer reports a stop: a resumed campaign trains it again), else ``failed``
    with the cause (the candidate's own, final)."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    if cancelled:
        cause = f"cancelled: its trainer actor was stopped ({type(exc).__name__})"
    else:
        cause = f"the trainer actor died ({type(exc).__name__}): {first_line}"
    outcome = TrainingOutcome(
        status="cancelled" if cancelled else "failed",
        cause=cause,
        wall_s=wall,
        log_path=task.work_dir / "train.log",
        command=[],
    )
    return TrainedModel(outcome, dispatched, dispatched, utc_now(), {"lost": True})
