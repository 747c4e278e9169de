"""Every trainer keeps the same contract on the same task: ``LocalTrainer`` (a child process
here) and ``RayTrainerPool`` (a Ray actor) train one real tiny MACE recipe, fail a task the
same way, and report a cancelled training (the campaign's stop, or one task's cancel) as
cancelled — which is what lets a resumed campaign train it again (``resume.py`` takes
``failed`` as the candidate's own, final fault).

The Ray case needs the loopback-only namespace that ``make test`` makes (``ray_session``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from mlipilot.config import RayResources
from mlipilot.data.dataset import Dataset
from mlipilot.model_files import read_package
from mlipilot.recipe import Recipe
from mlipilot.stopping import StopRequest
from mlipilot.training.tasks import LocalTrainer, RecipeTask, TrainedModel, Trainer
from mlipilot.training.trainer import EpochRecord, TrainingBudget

pytestmark = pytest.mark.slow

EPOCHS = 3
RECIPE = Recipe(num_channels=8, r_max=4.0, num_interactions=1, lr=0.01, batch_size=10)


class Harness:
    """A trainer with the way a campaign drives it: progress comes through the callback
    (here) or ``poll()`` (Ray), and a stop is a StopRequest plus ``cancel_all()``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.stop = StopRequest()
        self.trainer: Trainer
        if kind == "local":
            self.trainer = LocalTrainer("cpu", self.stop)
        else:
            from mlipilot.training.ray_trainer import RayTrainerPool

            self.trainer = RayTrainerPool(f"conformance-{time.monotonic_ns()}", RayResources())
        self.progress: list[tuple[int, int]] = []

    def train(self, task: RecipeTask) -> TrainedModel:
        """Trains ``task`` in a thread, draining ``poll()`` as the campaign does."""
        answer: list[TrainedModel | BaseException] = []

        def work() -> None:
            try:
                answer.append(self.trainer.train(task, self._seen))
            except BaseException as exc:  # the contract says it never raises: shown below
                answer.append(exc)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while thread.is_alive():
            for name, done, total, record in self.trainer.poll():
                assert name == task.name
                self._seen(done, total, record)
            thread.join(timeout=0.2)
        for _, done, total, record in self.trainer.poll():
            self._seen(done, total, record)
        [reply] = answer
        assert isinstance(reply, TrainedModel), f"train() raised {reply!r}"
        return reply

    def _seen(self, done: int, total: int, record: EpochRecord) -> None:
        self.progress.append((done, total))

    def cancel(self) -> None:
        self.stop.request("cancelled", "cancelled by the test")
        self.trainer.cancel_all()


@pytest.fixture(params=["local", "ray"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    made = Harness(request.param)
    yield made
    made.trainer.close()


def _task(tmp_path: Path, data: Dataset, epochs: int = EPOCHS, train_file: Path | None = None):
    work = tmp_path / "it001"
    work.mkdir()
    return RecipeTask(
        name="it001",
        work_dir=work,
        recipe=RECIPE,
        train_file=train_file or data.path("train"),
        atomic_numbers=[29],
        budget=TrainingBudget(epochs=epochs, max_seconds=600),
        threads=1,
    )


def test_a_recipe_trains_to_a_loadable_model_with_its_progress(
    harness: Harness, cu_data: Dataset, tmp_path: Path
) -> None:
    trained = harness.train(_task(tmp_path, cu_data))
    outcome = trained.outcome
    assert outcome.status == "ok", outcome.cause
    assert outcome.model_path is not None and outcome.model_path.is_file()
    assert outcome.model_path.is_relative_to(tmp_path / "it001")
    read_package(outcome.model_path)  # configuration + tensors, no pickle
    assert [e.epoch for e in outcome.curve if e.epoch >= 0] == list(range(EPOCHS))
    # Progress reached the campaign, whichever way it travelled, up to the last epoch.
    assert harness.progress and harness.progress[-1] == (EPOCHS, EPOCHS)
    assert [d for d, _ in harness.progress] == sorted(d for d, _ in harness.progress)
    times = [datetime.fromisoformat(t) for t in (trained.dispatched_at, trained.started_at)]
    assert times[0] <= times[1] <= datetime.fromisoformat(trained.finished_at)
    assert trained.detail["device"] == "cpu"


def test_a_task_that_cannot_train_is_a_failed_outcome_with_its_cause(
    harness: Harness, cu_data: Dataset, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-train.xyz"
    trained = harness.train(_task(tmp_path, cu_data, train_file=missing))
    assert trained.outcome.status == "failed"
    assert trained.outcome.model_path is None
    assert trained.outcome.cause
    assert (tmp_path / "it001" / "train.log").is_file()  # the log a user reads to see why


@pytest.mark.parametrize("how", ["campaign stopped", "this task only"])
def test_a_cancelled_training_is_cancelled_not_failed(
    harness: Harness, cu_data: Dataset, tmp_path: Path, how: str
) -> None:
    """A campaign's stop cancels every training; ``cancel(name)`` one, the campaign going on
    (a seed repeat no decision needs any more)."""
    task = _task(tmp_path, cu_data, epochs=10_000)

    def cancel_once_training() -> None:
        deadline = time.monotonic() + 300
        log = task.work_dir / "train.log"
        while not (log.is_file() and "Epoch 0" in log.read_text(errors="replace")):
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        if how == "campaign stopped":
            harness.cancel()
        else:
            harness.trainer.cancel("another")  # nothing of that name trains: a no-op
            harness.trainer.cancel(task.name)

    canceller = threading.Thread(target=cancel_once_training, daemon=True)
    canceller.start()
    t0 = time.monotonic()
    trained = harness.train(task)
    canceller.join(timeout=5)
    assert trained.outcome.status == "cancelled", trained.outcome.cause
    assert trained.outcome.model_path is None
    assert time.monotonic() - t0 < 300
    assert harness.stop.is_set() == (how == "campaign stopped")
