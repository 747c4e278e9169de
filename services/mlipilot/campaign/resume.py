"""What an unfinished campaign's ledger already holds, for ``mlipilot run --resume``.

Resume replays the campaign loop over the ledger: every step the ledger records is taken from
it (a recorded proposal is not asked of the agent again, a scored candidate is not retrained,
a recorded decision is not written twice) and the loop goes on from the first step it does not
record. Decisions are a pure function of the results, so the replay reaches the same incumbent
the killed process had.

A candidate counts as done when the ledger has its scoring (or a training that failed on its
own: error, non-finite loss, time-out). One that was in flight (no such row, a cancelled
training, or a model file gone) is trained again; its old folder is kept beside the new one as
``<name>.interrupted``.

Seed repeats (noise-aware acceptance) are candidates of their own for this purpose: a ``repeat``
row says one was dispatched, and its training and scoring rows say it is done, so a resumed
campaign reuses it and trains again only the ones in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlipilot.agents.base import Proposal
from mlipilot.errors import MlipilotError
from mlipilot.ledger import CampaignHistory, LedgerEvent, score_result
from mlipilot.ledger.events import ProposalDetail, TrainingDetail
from mlipilot.scoring.result import ScoreResult

# Training outcomes that are the candidate's own fault: recorded as its failure, not re-run.
_FINAL_TRAINING = ("failed", "timeout")


@dataclass(frozen=True)
class KnownOutcome:
    """A candidate's outcome as recorded: its model, its result or why it has none."""

    model: Path | None
    result: ScoreResult | None
    failure: str | None


@dataclass
class PriorRun:
    """The recorded part of a campaign; empty for a new one."""

    started: LedgerEvent | None = None
    iterations_started: set[int] = field(default_factory=set)
    proposals: dict[int, list[Proposal]] = field(default_factory=dict)  # in candidate order
    proposed: set[str] = field(default_factory=set)
    repeated: set[str] = field(default_factory=set)  # seed repeats dispatched (``repeat`` rows)
    known: dict[str, KnownOutcome] = field(default_factory=dict)
    decided: set[str] = field(default_factory=set)
    decision_rows: dict[str, int] = field(default_factory=dict)  # candidate -> its row id
    program_base: dict[str, str] = field(default_factory=dict)  # code mode: commit tried on
    made_from: dict[str, str] = field(default_factory=dict)  # candidate -> its incumbent
    agent_failed: set[int] = field(default_factory=set)  # iterations with an agent failure
    # Proposals and decisions after the baseline's, in ledger order, as ("proposal" |
    # "decision", candidate, iteration): an asynchronous campaign replays them in this order.
    order: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def in_flight(self) -> list[str]:
        """Candidates (and seed repeats) dispatched but neither scored nor failed: they are
        trained again."""
        return sorted((self.proposed | self.repeated) - set(self.known))

    def dispatched(self, name: str) -> bool:
        """Whether an earlier run already sent ``name`` to a trainer (its folder may exist)."""
        return name in self.proposed or name in self.repeated


def read_prior_run(run_dir: Path, events: list[LedgerEvent]) -> PriorRun:
    """The recorded part of the campaign in ``run_dir``; refuses a finished campaign."""
    history = CampaignHistory.of(events)
    end = history.ending
    if end is not None and end.status == "finished":
        raise MlipilotError(f"{run_dir}: the campaign finished ({end.reason}); nothing to resume")
    prior = PriorRun(started=history.started)
    by_iteration: dict[int, dict[int, Proposal]] = {}
    for e in events:
        if e.event == "iteration_started" and e.iteration is not None:
            prior.iterations_started.add(e.iteration)
        elif e.event == "proposal" and e.candidate and e.iteration is not None:
            prior.proposed.add(e.candidate)
            detail = e.details(ProposalDetail)
            proposal = Proposal(
                hypothesis=e.hypothesis or "-",
                patch=e.patch or ({} if detail.diff else {"-": "-"}),  # the baseline has none
                diff=detail.diff,
            )
            if detail.base_commit:
                prior.program_base[e.candidate] = detail.base_commit
            if detail.incumbent:
                prior.made_from[e.candidate] = detail.incumbent
            by_iteration.setdefault(e.iteration, {})[candidate_index(e.candidate)] = proposal
            if e.iteration > 0:
                prior.order.append(("proposal", e.candidate, e.iteration))
        elif e.event == "agent_failure" and e.iteration is not None:
            prior.agent_failed.add(e.iteration)
        elif e.event == "repeat" and e.candidate:
            prior.repeated.add(e.candidate)
        elif e.event == "decision" and e.candidate:
            prior.decided.add(e.candidate)
            if e.id is not None:
                prior.decision_rows[e.candidate] = e.id
            if e.iteration:
                prior.order.append(("decision", e.candidate, e.iteration))
    prior.proposals = {it: [p for _, p in sorted(ps.items())] for it, ps in by_iteration.items()}
    for name, training in history.trainings.items():
        outcome = _known_outcome(training, history.evaluations.get(name))
        if outcome is not None:
            prior.known[name] = outcome
    return prior


def candidate_index(name: str) -> int:
    """``it003`` -> 0, ``it003-2`` -> 1: the candidate's place among its iteration's."""
    _, _, number = name.partition("-")
    return int(number) - 1 if number else 0


def _known_outcome(training: LedgerEvent, evaluation: LedgerEvent | None) -> KnownOutcome | None:
    if training.status in _FINAL_TRAINING:
        return KnownOutcome(None, None, f"training {training.status}: {training.reason}")
    if training.status != "ok" or evaluation is None:
        return None  # cancelled, or killed before its scoring was recorded: train again
    model = _model_path(training)
    if model is None or not model.is_file():
        return None
    if evaluation.metrics is None:
        return KnownOutcome(model, None, evaluation.reason or "scoring failed")
    return KnownOutcome(model, score_result(evaluation), None)


def _model_path(training: LedgerEvent) -> Path | None:
    uri = training.details(TrainingDetail).model
    if not uri:
        return None
    return Path(unquote(urlparse(uri).path))
