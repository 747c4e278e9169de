"""Talking to the agent: what it is shown, what it may propose, and what asking costs.

One session per campaign run. It asks for an iteration's proposals one at a time (each told
about those before it), refuses what cannot train (told to the agent, which may try again up
to ``agent_retries`` times), records every LLM conversation and its tokens, stops asking once
the campaign's token budget is spent, and keeps the history the agent reads next time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, cast

from mlipilot import faults
from mlipilot.agents.base import (
    Agent,
    AgentCost,
    AgentFailed,
    AgentGaveUp,
    AgentUnreachable,
    CampaignState,
    HistoryEntry,
    Proposal,
)
from mlipilot.campaign.candidates import candidate_name
from mlipilot.campaign.modes import CampaignMode
from mlipilot.campaign.recorder import Recorder
from mlipilot.campaign.reporting import Reporter
from mlipilot.code_mode.diffs import CodeEditError
from mlipilot.code_mode.program_files import program_digest
from mlipilot.config import Campaign
from mlipilot.recipe import Recipe, RecipeError
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.spec import ScorecardSpec
from mlipilot.training.mace_args import untrainable


@dataclass
class AgentSession:
    agent: Agent
    campaign: Campaign
    spec: ScorecardSpec
    train_frames: int
    train_stress: bool  # every training frame has a stress label
    mode: CampaignMode
    recorder: Recorder
    reporter: Reporter
    history: list[HistoryEntry] = field(default_factory=list)  # what the agent reads
    failed: set[int] = field(default_factory=set)  # iterations the agent failed
    _tokens: int | None = None  # LLM tokens so far, this run and any before a resume

    @property
    def per_iteration(self) -> int:
        return self.campaign.budget.candidates_per_iteration

    def check(self, recipe: Recipe, proposal: Proposal) -> None:
        """Refuse (as an invalid patch, told to the agent) what cannot be trained: a recipe
        too big for the data, or a stress loss on data without stress; in code mode a knob
        the program lacks, or a diff that cannot apply; in recipe mode any diff."""
        why = untrainable(recipe, self.train_frames, self.train_stress)
        if why is not None:
            raise RecipeError(why)
        self.mode.check(recipe, proposal)

    def ask_batch(
        self, iteration: int, recipe: Recipe, result: ScoreResult | None
    ) -> list[Proposal]:
        """Up to ``candidates_per_iteration`` proposals against the incumbent (``recipe``,
        ``result``), each told about those before it."""
        proposals: list[Proposal] = []
        pending: list[Recipe] = []
        for slot in range(self.per_iteration):
            proposal = self.ask(iteration, recipe, result, pending, slot)
            if proposal is None:
                break
            proposals.append(proposal)
            pending.append(recipe.patched(proposal.patch))
        return proposals

    def ask(
        self,
        iteration: int,
        recipe: Recipe,
        result: ScoreResult | None,
        pending: list[Recipe],
        slot: int = 0,
        asked_alongside: int = 0,
    ) -> Proposal | None:
        """A validated proposal against the incumbent (``recipe``, ``result``), told about the
        ``pending`` recipes (proposed, not yet decided), or None when the agent gives up or
        fails; refusals are recorded, and so is every conversation with an LLM agent
        (``agent_call``). ``slot``: its place among the iteration's proposals, or among
        ``asked_alongside`` + 1 asked at once (``aside``)."""
        if self._token_budget_spent(iteration):
            return None
        candidate = candidate_name(iteration, slot, self.per_iteration)
        last_error = None
        # Code mode: the incumbent's program, read once for every attempt (it cannot change).
        program = self.mode.program_files()
        for attempt in range(self.campaign.budget.agent_retries + 1):
            state = CampaignState(
                iteration=iteration,
                iterations_total=self.campaign.budget.iterations,
                spec=self.spec,
                baseline=self.campaign.baseline,
                incumbent=recipe,
                incumbent_result=result,
                history=self.history,
                pending=pending,
                slot=slot,
                asked_alongside=asked_alongside,
                last_error=last_error,
                train_frames=self.train_frames,
                train_stress=self.train_stress,
                program=program,
                program_sha256=program_digest(program) if program is not None else None,
            )
            try:
                proposal = self.agent.propose(state)
                self._called(iteration, candidate, "proposed", proposal.cost)
                faults.reached("agent", iteration)
                self.check(recipe.patched(proposal.patch), proposal)
                return proposal
            except AgentGaveUp as exc:  # AgentFailed: this iteration only, the campaign goes on
                failed = isinstance(exc, AgentFailed)
                status = "failed" if failed else "gave_up"
                self._called(iteration, candidate, status, exc.cost, str(exc))
                self.recorder.agent_failure(iteration, status, str(exc))
                if failed:
                    self.reporter.note(
                        f"iteration {iteration}: agent {self.agent.name} failed: {exc}"
                    )
                    self.failed.add(iteration)
                else:
                    self.reporter.note(f"agent {self.agent.name} gave up: {exc}")
                return None
            except AgentUnreachable as exc:
                # The server is gone: the campaign stops (resumable), but the calls answered
                # before the break cost tokens, which the budget and the report must count.
                self._called(iteration, candidate, "server_error", exc.cost, str(exc))
                raise
            except (RecipeError, CodeEditError) as exc:
                last_error = str(exc)
                self.recorder.agent_failure(
                    iteration, "invalid_patch", last_error, detail={"attempt": attempt}
                )
        self.reporter.note(f"iteration {iteration}: no valid proposal after retries: {last_error}")
        return None

    def aside(self) -> AgentSession:
        """A copy of this session to ask from another thread while the campaign goes on. It
        reads a snapshot of the history and keeps what it would record, for ``rejoin`` to
        record from the campaign's thread: the ledger has one writer and one order."""
        tokens = self.tokens_spent()
        return replace(
            self,
            recorder=cast(Recorder, _Deferred()),
            reporter=cast(Reporter, _Deferred()),
            history=list(self.history),
            failed=set(),
            _tokens=tokens,
        )

    def rejoin(self, aside: AgentSession) -> None:
        """Record what ``aside`` did (in this, the campaign's thread), and count its tokens."""
        cast(_Deferred, aside.reporter).replay(self.reporter)
        cast(_Deferred, aside.recorder).replay(self.recorder)
        self.failed |= aside.failed
        self._tokens = None  # read again from the ledger, now holding aside's calls too

    def tokens_spent(self) -> int:
        if self._tokens is None:
            self._tokens = self.recorder.tokens_spent()
        return self._tokens

    def _token_budget_spent(self, iteration: int) -> bool:
        """True (and recorded) when the campaign's LLM token budget is used up: stop asking."""
        budget = self.campaign.budget.agent_tokens
        if budget is None or self.tokens_spent() < budget:
            return False
        reason = f"the campaign's token budget is spent: {self.tokens_spent()} of {budget} tokens"
        self.recorder.agent_failure(iteration, "token_budget", reason)
        self.reporter.note(reason)
        return True

    def _called(
        self,
        iteration: int,
        candidate: str,
        status: str,
        cost: AgentCost | None,
        reason: str | None = None,
    ) -> None:
        if cost is None:  # not an LLM: nothing was said, nothing spent
            return
        self._tokens = self.tokens_spent() + cost.total_tokens
        self.recorder.agent_call(iteration, candidate, status, cost, reason)


class _Deferred:
    """Stands in for the recorder or reporter of a session asked from another thread: it keeps
    every call, and ``replay`` makes them on the real one, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))

    def replay(self, target: object) -> None:
        for name, args, kwargs in self.calls:
            getattr(target, name)(*args, **kwargs)
