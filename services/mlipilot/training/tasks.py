"""The training contract: what a trainer is handed, what it answers, and the local trainer.

A ``TrainingTask`` is one candidate's training, complete and picklable: a trainer runs it here
(``LocalTrainer``) or ships it to a Ray actor (``training/ray_trainer.py``) without knowing
whether it trains a recipe (``RecipeTask``) or, in code mode, the candidate's own program
(``code_mode/trainer.py``'s ``ProgramTask``). The campaign decides which; trainers stay below it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlipilot.ledger import utc_now
from mlipilot.recipe import Recipe
from mlipilot.stopping import StopRequest
from mlipilot.training.trainer import (
    EpochRecord,
    ProgressFn,
    TrainingBudget,
    TrainingOutcome,
    train_recipe,
)


@dataclass(frozen=True)
class TrainingTask:
    """One candidate's training: ``run`` trains it into ``work_dir`` and never raises for what
    training does (a failure is an outcome)."""

    name: str  # the candidate's
    work_dir: Path

    def run(
        self, device: str, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> TrainingOutcome:
        raise NotImplementedError

    def before_retry(self) -> None:
        """Clear what a lost attempt left behind that would stop a second one."""

    def where(self, device: str) -> dict[str, Any]:
        """What the ledger says about where it trained, when it trained here."""
        return {"device": device}


@dataclass(frozen=True)
class RecipeTask(TrainingTask):
    """mace_run_train on a recipe, in a child process of the caller."""

    recipe: Recipe
    train_file: Path
    atomic_numbers: list[int]
    budget: TrainingBudget
    threads: int | None = None

    def run(
        self, device: str, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> TrainingOutcome:
        return train_recipe(
            self.recipe,
            train_file=self.train_file,
            atomic_numbers=self.atomic_numbers,
            work_dir=self.work_dir,
            budget=self.budget,
            progress=progress,
            device=device,
            threads=self.threads,
            cancel=cancel,
        )


@dataclass
class TrainedModel:
    """A trainer's answer, with when the work was handed out and when training ran."""

    outcome: TrainingOutcome
    dispatched_at: str
    started_at: str
    finished_at: str
    detail: dict[str, Any] = field(default_factory=dict)  # device, node, retried, ...


class Trainer(Protocol):
    def train(self, task: TrainingTask, progress: ProgressFn) -> TrainedModel: ...

    def poll(self) -> list[tuple[str, int, int, EpochRecord]]:
        """Progress posted from elsewhere (Ray actors): (candidate, done, total, record)."""
        ...

    def cancel(self, name: str) -> None:
        """Stop one task's training (its outcome: cancelled); nothing when it is not training.
        The campaign goes on: a seed repeat no decision needs any more is cancelled so."""
        ...

    def cancel_all(self) -> None: ...

    def close(self) -> None: ...


class _Cancel(threading.Event):
    """One task's cancel: set by ``cancel(name)``, and set whenever the campaign's stop is
    (tasks only ask ``is_set()``)."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self._stop = stop

    def is_set(self) -> bool:
        return super().is_set() or self._stop.is_set()


class LocalTrainer:
    """Runs each task here, on ``device``; a stop, or a cancel of its task, kills its child
    process."""

    def __init__(self, device: str, stop: StopRequest) -> None:
        self.device = device
        self.stop = stop
        self._cancels: dict[str, _Cancel] = {}  # by task, while it trains
        self._lock = threading.Lock()

    def train(self, task: TrainingTask, progress: ProgressFn) -> TrainedModel:
        started = utc_now()
        cancel = _Cancel(self.stop.event)
        with self._lock:
            self._cancels[task.name] = cancel
        try:
            outcome = task.run(self.device, progress, cancel)
        finally:
            with self._lock:
                self._cancels.pop(task.name, None)
        return TrainedModel(outcome, started, started, utc_now(), task.where(self.device))

    def poll(self) -> list[tuple[str, int, int, EpochRecord]]:
        return []

    def cancel(self, name: str) -> None:
        with self._lock:
            cancel = self._cancels.get(name)
        if cancel is not None:
            cancel.set()

    def cancel_all(self) -> None:
        pass  # every task's cancel is also set by the stop

    def close(self) -> None:
        pass
