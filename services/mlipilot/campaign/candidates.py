"""Training and scoring candidates side by side: an iteration's (synchronous campaigns) or
whichever are in flight (asynchronous ones).

Each candidate gets a worker thread that trains it (in a child process here, or on a Ray actor)
and then scores it. Workers never touch the ledger or the console: they post what happens to
a queue, and the calling thread records it, so the ledger keeps one writer and one order.
A stop (cancel, shutdown) kills the trainers at once and ends the iteration.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mlipilot.agents.base import Proposal
from mlipilot.ledger import utc_now
from mlipilot.recipe import Recipe
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.scorecard import Scorer, ScorerUnavailable
from mlipilot.stopping import CampaignStopped, StopRequest
from mlipilot.training.tasks import TrainedModel, Trainer, TrainingTask
from mlipilot.training.trainer import EpochRecord, TrainingBudget


def candidate_name(iteration: int, index: int, per_iteration: int) -> str:
    """``it003`` with one candidate per iteration; ``it003-1``, ``it003-2``, ... with more."""
    base = f"it{iteration:03d}"
    return base if per_iteration == 1 else f"{base}-{index + 1}"


@dataclass(frozen=True)
class CandidateJob:
    iteration: int
    index: int  # its place among the iteration's proposals: the tie-breaker
    name: str
    recipe: Recipe
    proposal: Proposal
    work_dir: Path
    base_commit: str | None = None  # code mode: the program commit its diff applies to


class TaskFor(Protocol):
    """Turns a candidate into the task its trainer runs: the campaign's mode, in one place."""

    def __call__(self, job: CandidateJob, budget: TrainingBudget) -> TrainingTask: ...


# --- what workers post ------------------------------------------------------------------------


@dataclass
class Progress:
    job: CandidateJob
    stage: str
    done: int
    total: int
    record: EpochRecord | None = None


@dataclass
class Trained:
    job: CandidateJob
    trained: TrainedModel


@dataclass
class Evaluated:
    job: CandidateJob
    result: ScoreResult | None
    failure: str | None
    started_at: str
    finished_at: str
    duration_s: float


@dataclass
class Finished:
    """The worker is done: the candidate's model, result and failure, whatever happened."""

    job: CandidateJob
    model: Path | None
    result: ScoreResult | None
    failure: str | None


@dataclass
class _Fatal:
    error: BaseException


Event = Progress | Trained | Evaluated | Finished


@dataclass
class Workers:
    """Where a campaign's candidates train and score: its trainer, what each candidate's
    training runs (its mode's tasks) and its scorer."""

    trainer: Trainer
    task_for: TaskFor
    scorer: Scorer
    on_ray: bool = False  # the trainers are Ray actors: this process holds a Ray session

    def run(
        self,
        jobs: list[CandidateJob],
        budget: TrainingBudget,
        baseline_model: Path | None,
        stop: StopRequest,
        handle: Callable[[Event], None],
    ) -> list[Finished]:
        """Train and score ``jobs`` concurrently; ``handle`` sees every event in this thread.
        Raises CampaignStopped after a stop, and ScorerUnavailable when scoring itself broke."""
        pool = self.pool(budget, baseline_model, stop, handle)
        for job in jobs:
            pool.submit(job)
        finished = {f.job.name: f for f in pool.drain()}
        return [finished[j.name] for j in jobs]

    def pool(
        self,
        budget: TrainingBudget,
        baseline_model: Path | None,
        stop: StopRequest,
        handle: Callable[[Event], None],
    ) -> CandidatePool:
        """An empty pool that candidates are submitted to one by one (asynchronous campaigns)."""
        return CandidatePool(
            self.trainer, self.task_for, self.scorer, budget, baseline_model, stop, handle
        )

    def close(self) -> None:
        self.trainer.close()
        if self.on_ray:
            from mlipilot import ray_runtime

            ray_runtime.release()


class CandidatePool:
    """Candidates training and scoring, each in its worker thread, started one by one.

    The synchronous loop submits an iteration's candidates and drains them; the asynchronous
    one keeps up to ``max_in_flight`` running and takes each as it finishes (``next``).
    Events reach ``handle`` in the calling thread, in the order the workers posted them.
    """

    def __init__(
        self,
        trainer: Trainer,
        task_for: TaskFor,
        scorer: Scorer,
        budget: TrainingBudget,
        baseline_model: Path | None,
        stop: StopRequest,
        handle: Callable[[Event], None],
    ) -> None:
        self.trainer, self.task_for, self.scorer = trainer, task_for, scorer
        self.budget, self.baseline_model = budget, baseline_model
        self.stop, self.handle = stop, handle
        self._posted: queue.Queue[Event | _Fatal] = queue.Queue()
        self._running: dict[str, tuple[CandidateJob, threading.Thread]] = {}
        self._fatal: BaseException | None = None
        self._cancelled = False

    def __len__(self) -> int:
        return len(self._running)

    @property
    def in_flight(self) -> list[CandidateJob]:
        return [job for job, _ in self._running.values()]

    def submit(self, job: CandidateJob) -> None:
        worker = threading.Thread(
            target=_work,
            args=(
                job,
                self.trainer,
                self.task_for,
                self.scorer,
                self.budget,
                self.baseline_model,
                self.stop,
                self._posted,
            ),
            name=f"candidate {job.name}",
            daemon=True,
        )
        self._running[job.name] = (job, worker)
        worker.start()

    def cancel(self, name: str) -> None:
        """Stop one candidate's training; its Finished (a cancelled training) follows. One
        past its training, or whose trainer has not started it yet, may finish anyway."""
        if name in self._running:
            self.trainer.cancel(name)

    def next(self, wake: Callable[[], bool] | None = None) -> Finished | None:
        """The next candidate to finish, or None as soon as ``wake()`` is true (an agent's
        answer came in meanwhile). After a stop (or scoring that broke) every other one is
        waited for first, then CampaignStopped (or ScorerUnavailable) is raised."""
        finished = self._next(wake)
        if self._fatal is not None or self.stop.is_set():
            self.drain()
        return finished

    def drain(self) -> list[Finished]:
        """Every candidate in flight, as each finishes; raises as ``next`` does."""
        done = []
        while self._running:
            finished = self._next()
            assert finished is not None  # nothing wakes it early
            done.append(finished)
        if self._fatal is not None:
            raise self._fatal
        self.stop.check()
        return done

    def _next(self, wake: Callable[[], bool] | None = None) -> Finished | None:
        if not self._running:
            raise RuntimeError("no candidate in flight")
        while True:
            if wake is not None and wake() and not self.stop.is_set():
                return None
            if self.stop.is_set() and not self._cancelled:
                self.trainer.cancel_all()
                self._cancelled = True
            for name, done, total, record in self.trainer.poll():
                if name in self._running:  # late epochs of a finished one (a failed trainer)
                    job = self._running[name][0]
                    self.handle(Progress(job, "train", done, total, record))
            try:
                item = self._posted.get(timeout=0.25)
            except queue.Empty:
                continue
            if isinstance(item, _Fatal):
                self._fatal = self._fatal or item.error
                self.stop.request("interrupted", f"scoring is unavailable: {item.error}")
                continue
            self.handle(item)
            if isinstance(item, Finished):
                _, worker = self._running.pop(item.job.name)
                worker.join()
                return item


def _work(
    job: CandidateJob,
    trainer: Trainer,
    task_for: TaskFor,
    scorer: Scorer,
    budget: TrainingBudget,
    baseline_model: Path | None,
    stop: StopRequest,
    posted: queue.Queue,
) -> None:
    try:
        trained = trainer.train(
            task_for(job, budget),
            lambda done, total, rec: posted.put(Progress(job, "train", done, total, rec)),
        )
        posted.put(Trained(job, trained))
        outcome = trained.outcome
        if outcome.model_path is None or stop.is_set():
            failure = f"training {outcome.status}: {outcome.cause}"
            posted.put(Finished(job, None, None, failure))
            return
        model = outcome.model_path
        posted.put(
            Finished(job, model, *_evaluate(job, model, scorer, baseline_model, stop, posted))
        )
    except ScorerUnavailable as exc:
        posted.put(_Fatal(exc))
        posted.put(Finished(job, None, None, f"scoring unavailable: {exc}"))
    except CampaignStopped as exc:
        posted.put(Finished(job, None, None, f"stopped: {exc}"))
    except Exception as exc:  # a worker must always finish, whatever broke
        posted.put(Finished(job, None, None, f"{type(exc).__name__}: {exc}"))


def _evaluate(
    job: CandidateJob,
    model: Path,
    scorer: Scorer,
    baseline_model: Path | None,
    stop: StopRequest,
    posted: queue.Queue,
) -> tuple[ScoreResult | None, str | None]:
    def progress(stage: str, done: int, total: int) -> None:
        stop.check()
        posted.put(Progress(job, stage, done, total))

    started, t0 = utc_now(), time.monotonic()
    try:
        result = scorer.evaluate(
            model,
            baseline_model_path=baseline_model or model,
            out_dir=job.work_dir,
            progress=progress,
        )
    except (CampaignStopped, ScorerUnavailable):
        raise
    except Exception as exc:  # a model the scorecard cannot run is a failed candidate
        failure = f"scoring failed: {type(exc).__name__}: {exc}"
        posted.put(Evaluated(job, None, failure, started, utc_now(), time.monotonic() - t0))
        return None, failure
    (job.work_dir / "result.json").write_text(result.model_dump_json(indent=2))
    posted.put(Evaluated(job, result, None, started, utc_now(), time.monotonic() - t0))
    return result, None


def rank(finished: list[Finished]) -> list[Finished]:
    """Scored candidates best first: feasible before infeasible, then lower composite (feasible)
    or lower violation (infeasible); ties go to the earlier proposal. Failed ones are left out."""
    scored = [f for f in finished if f.result is not None]

    def key(f: Finished) -> tuple[bool, float, int]:
        r = f.result
        assert r is not None
        return (not r.feasible, r.composite if r.feasible else r.violation, f.job.index)

    return sorted(scored, key=key)
