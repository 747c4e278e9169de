"""What a campaign changes: the recipe (``mode: recipe``) or the training program (``code``).

Everything the loop does differently in code mode is a method here, so the loop has no
``if code mode`` branches: a candidate's task, what identifies its training, the checks on a
proposal, what the agent sees of the program, what the ledger records with a proposal, and
what happens to an edit once decided (a commit on ``main`` or a ``reverted/<name>`` branch).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlipilot.agents.base import Proposal
from mlipilot.campaign.candidates import CandidateJob, TaskFor
from mlipilot.campaign.decision import Decision
from mlipilot.code_mode.program_files import TEMPLATE, program_digest, recipe_job
from mlipilot.code_mode.repo import ProgramRepo
from mlipilot.code_mode.trainer import ProgramTask
from mlipilot.config import Campaign
from mlipilot.errors import MlipilotError
from mlipilot.recipe import Recipe, RecipeError
from mlipilot.training.mace_args import training_key
from mlipilot.training.tasks import RecipeTask, TrainingTask
from mlipilot.training.trainer import TrainingBudget


@dataclass(frozen=True)
class RecipeTasks:
    """Recipe mode: mace_run_train on the candidate's recipe."""

    train_file: Path
    atomic_numbers: list[int]
    threads: int | None

    def __call__(self, job: CandidateJob, budget: TrainingBudget) -> TrainingTask:
        return RecipeTask(
            name=job.name,
            work_dir=job.work_dir,
            recipe=job.recipe,
            train_file=self.train_file,
            atomic_numbers=self.atomic_numbers,
            budget=budget,
            threads=self.threads,
        )


@dataclass(frozen=True)
class ProgramTasks:
    """Code mode: the incumbent's program with the candidate's diff, in the sandbox."""

    repo: ProgramRepo
    train_file: Path
    threads: int | None

    def __call__(self, job: CandidateJob, budget: TrainingBudget) -> TrainingTask:
        return ProgramTask.of(
            self.repo,
            job.name,
            job.work_dir,
            job.proposal.diff,
            job.base_commit,
            job.recipe,
            self.train_file,
            budget,
            self.threads or 1,
        )


class CampaignMode(Protocol):
    def task_for(
        self, train_file: Path, atomic_numbers: list[int], threads: int | None
    ) -> TaskFor: ...

    def check(self, recipe: Recipe, proposal: Proposal) -> None:
        """Raise RecipeError or CodeEditError (told to the agent) for what cannot train."""

    def base(self, name: str) -> str | None:
        """The program commit candidate ``name`` applies its diff to (None in recipe mode)."""

    def incumbent_base(self) -> str | None:
        """The commit the incumbent's program is (its own diff is committed there)."""

    def program_after(self, diff: str | None, base: str | None) -> str | None:
        """The digest of the program a candidate trains (None in recipe mode)."""

    def key(self, recipe: Recipe, proposal: Proposal, base: str | None, epochs: int) -> str:
        """What identifies a training: equal keys train alike, so one is never run twice."""

    def program_files(self) -> dict[str, str] | None:
        """What the agent is shown of the incumbent's program."""

    def proposal_detail(self, job: CandidateJob) -> dict[str, Any]:
        """What the ledger records with a proposal, beyond its recipe."""

    def started_detail(self) -> dict[str, Any]:
        """What the ledger records with the campaign's start."""

    def decided(self, job: CandidateJob, decision: Decision, row_id: int) -> None:
        """After a decision's row: what becomes of the candidate's edit."""


class RecipeMode:
    """The agent patches the recipe; mace_run_train trains it."""

    def task_for(self, train_file: Path, atomic_numbers: list[int], threads: int | None) -> TaskFor:
        return RecipeTasks(train_file, atomic_numbers, threads)

    def check(self, recipe: Recipe, proposal: Proposal) -> None:
        if proposal.diff is not None:
            raise RecipeError("a diff of the program needs `mode: code` in the campaign file")

    def base(self, name: str) -> str | None:
        return None

    def incumbent_base(self) -> str | None:
        return None

    def program_after(self, diff: str | None, base: str | None) -> str | None:
        return None

    def key(self, recipe: Recipe, proposal: Proposal, base: str | None, epochs: int) -> str:
        return training_key(recipe, epochs)

    def program_files(self) -> dict[str, str] | None:
        return None

    def proposal_detail(self, job: CandidateJob) -> dict[str, Any]:
        return {}

    def started_detail(self) -> dict[str, Any]:
        return {}

    def decided(self, job: CandidateJob, decision: Decision, row_id: int) -> None:
        pass


@dataclass
class CodeMode:
    """The agent edits the training program (a git repository in the run folder) as well as
    the recipe; each candidate trains the incumbent's program with its diff, in the sandbox."""

    program: ProgramRepo
    editable: tuple[str, ...]
    bases: dict[str, str] = field(default_factory=dict)  # candidate -> commit tried on

    @classmethod
    def open(
        cls, campaign: Campaign, code_dir: Path, resumed: bool, bases: dict[str, str]
    ) -> CodeMode:
        """The campaign's copy of the baseline program under git (the one it has, when
        resumed); ``bases``: the commits recorded with earlier proposals."""
        try:
            recipe_job(campaign.baseline)
        except RecipeError as exc:
            raise MlipilotError(f"baseline: {exc}") from exc
        if resumed and code_dir.exists():
            program = ProgramRepo.open(code_dir, campaign.editable)
        else:
            program = ProgramRepo.create(code_dir, TEMPLATE, campaign.editable)
        return cls(program, tuple(campaign.editable), dict(bases))

    def task_for(self, train_file: Path, atomic_numbers: list[int], threads: int | None) -> TaskFor:
        return ProgramTasks(self.program, train_file, threads)

    def check(self, recipe: Recipe, proposal: Proposal) -> None:
        recipe_job(recipe)  # a knob the program lacks
        if proposal.diff is not None:
            self.program.check(proposal.diff)

    def base(self, name: str) -> str | None:
        # Recorded with its proposal (also before a resume), else main now.
        return self.bases.setdefault(name, self.program.head())

    def incumbent_base(self) -> str | None:
        return self.program.head()

    def program_after(self, diff: str | None, base: str | None) -> str | None:
        with tempfile.TemporaryDirectory(prefix="mlipilot-program-") as tmp:
            copy = self.program.materialize(diff, Path(tmp) / "program", base)
            return program_digest({p: (copy / p).read_text() for p in self.editable})

    def key(self, recipe: Recipe, proposal: Proposal, base: str | None, epochs: int) -> str:
        return f"{training_key(recipe, epochs)}:{self.program_after(proposal.diff, base)}"

    def program_files(self) -> dict[str, str] | None:
        return self.program.files()

    def proposal_detail(self, job: CandidateJob) -> dict[str, Any]:
        return {"diff": job.proposal.diff, "base_commit": job.base_commit}

    def started_detail(self) -> dict[str, Any]:
        return {"program_commit": self.program.head()}

    def decided(self, job: CandidateJob, decision: Decision, row_id: int) -> None:
        """An accepted edit becomes a commit on main; any other is kept on
        ``reverted/<name>``. The message is the hypothesis; trailers name the candidate and its
        decision's ledger row. Also for a decision replayed on resume: one killed before its
        commit gets it now."""
        diff = job.proposal.diff
        if diff is None or job.name in self.program.candidates():
            return
        trailers = {"Candidate": job.name, "Verdict": decision.verdict, "Ledger-Row": str(row_id)}
        message = job.proposal.hypothesis
        if decision.verdict == "ACCEPT":  # the program it trained: main may have moved on
            self.program.accept(diff, message, trailers, base=job.base_commit)
        else:  # off the commit it was tried on: main may have moved on in the same iteration
            self.program.keep_reverted(
                diff, f"reverted/{job.name}", message, trailers, base=job.base_commit
            )


def campaign_mode(
    campaign: Campaign, code_dir: Path, resumed: bool, bases: dict[str, str]
) -> CampaignMode:
    if campaign.mode == "code":
        return CodeMode.open(campaign, code_dir, resumed, bases)
    return RecipeMode()
