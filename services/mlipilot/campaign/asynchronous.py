"""Asynchronous campaigns (``budget.scheduler: async``): up to ``max_in_flight`` candidates
train and score at once; each is decided the moment it finishes, against the incumbent of that
moment, and the agent is asked for the next proposal while the others keep running.

Every candidate is an iteration of its own (``it001``, ``it002``, ...). Its proposal records
the incumbent it was made from, and its decision the incumbent it was decided against. A
decision is the same rule as a synchronous campaign's, applied to the candidate's result and
that incumbent's, so the ledger's order of proposals and decisions determines every decision:
a resumed campaign replays that order (``PriorRun.order``) and reaches the same incumbent;
the candidates in flight when it stopped train again, and it goes on from there.

A proposal whose training already ran is answered from it; one whose training is in flight
waits for it. Neither trains again.

With ``asks_in_flight`` > 1 and an agent that answers concurrently (an LLM), up to that many
proposals are asked at once, each in a thread of its own (``AgentSession.aside``), while
candidates train: a 32B model's minute or two per proposal would otherwise leave freed GPUs
idle one after the other. Each is told how many others are being asked as it is, and its
rank among them (propose your second-best idea), so that they differ. A
proposal is made from the incumbent of the moment it was asked, patched onto that incumbent's
recipe and recorded as made from it, even when a decision replaced the incumbent while the
agent thought; it is recorded when its answer comes in, and the replay uses the incumbent it
records. An iteration asked and not answered before a stop has no proposal in the ledger, and
the resumed campaign asks for it again.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from mlipilot.agents.base import Proposal, answers_concurrently
from mlipilot.campaign.agent_session import AgentSession
from mlipilot.campaign.candidates import CandidateJob, CandidatePool, Finished, candidate_name
from mlipilot.campaign.decision import Decision, decide
from mlipilot.campaign.layout import RunLayout
from mlipilot.campaign.modes import CampaignMode
from mlipilot.campaign.recorder import Recorder
from mlipilot.campaign.resume import PriorRun
from mlipilot.campaign.run_folder import fresh_work_dir
from mlipilot.campaign.selection import Incumbent, PastTraining, Trainings, plan_repeats
from mlipilot.config import NoiseConfig
from mlipilot.errors import MlipilotError
from mlipilot.stopping import StopRequest

# The loop's own steps, which both schedulers share: record a decision (and what follows from
# it: history, the code mode's branch, the console's row), and take an accepted candidate as
# the new incumbent (its model as best.model, its validation when asked for).
Decided = Callable[[Finished, Decision, str, dict[str, Any] | None], None]
Accepted = Callable[[Finished], Incumbent]


@dataclass
class _Waiting:
    """A proposal made and not yet decided."""

    job: CandidateJob
    key: str  # its training key
    same_as: str | None = None  # the candidate whose training answers it (a duplicate)
    outcome: Finished | None = None  # its outcome, once known


@dataclass
class _Asking:
    """A proposal asked of the agent in another thread, not yet answered."""

    iteration: int
    made_from: Incumbent  # the incumbent it is asked against
    slot: int  # its place among those asked at once
    session: AgentSession  # the aside it is asked through
    answer: Future[Proposal | None]


@dataclass
class AsyncScheduler:
    iterations: int
    max_in_flight: int
    epochs: int
    min_improvement: float
    layout: RunLayout
    mode: CampaignMode
    session: AgentSession
    recorder: Recorder
    prior: PriorRun
    trained: Trainings
    pool: CandidatePool
    stop: StopRequest
    decided: Decided
    accepted: Accepted
    asks_in_flight: int = 1
    noise: NoiseConfig | None = None  # noise-aware acceptance: would-be accepts over seeds
    incumbent: Incumbent | None = None  # of this moment: set by run()
    _open: dict[str, _Waiting] = field(default_factory=dict)  # proposed, undecided, by name
    _asking: list[_Asking] = field(default_factory=list)  # asked aside, not yet answered
    _queued: list[CandidateJob] = field(default_factory=list)  # proposed, waiting for a worker
    _repeating: dict[str, str] = field(default_factory=dict)  # seed repeats queued or training
    _wanted: set[str] = field(default_factory=set)  # training keys waiting decisions need
    _dropping: set[str] = field(default_factory=set)  # repeats cancelled, not yet finished
    _incumbents: dict[str, Incumbent] = field(default_factory=dict)  # every one, by name
    _unasked: list[int] = field(default_factory=list)  # resumed: asked before, not answered
    _next_iteration: int = 1
    _agent_done: bool = False  # the agent gave up: nothing more is asked

    def run(self, incumbent: Incumbent) -> Incumbent:
        self.incumbent = incumbent
        self._incumbents[incumbent.name] = incumbent
        self._replay()
        agent = None
        if self.asks_in_flight > 1 and answers_concurrently(self.session.agent):
            agent = ThreadPoolExecutor(self.asks_in_flight, thread_name_prefix="agent")
        try:
            while True:
                self._take_answers()
                self._decide_known()
                self._start_queued()
                if self._may_ask(ahead=self.asks_in_flight if agent is not None else 0):
                    if agent is not None:
                        self._ask_aside(agent)
                    else:
                        self._ask_next()
                    continue
                if self.pool:
                    finished = self.pool.next(wake=self._answered)
                    if finished is not None:
                        self._finished(finished)
                elif self._asking:
                    self.stop.check()
                    wait([a.answer for a in self._asking], 0.25, FIRST_COMPLETED)
                else:
                    return self._inc
        finally:  # done, stopped or broken: answers still on their way are not waited for
            if agent is not None:
                agent.shutdown(wait=False, cancel_futures=True)

    @property
    def _inc(self) -> Incumbent:
        assert self.incumbent is not None, "run() sets the incumbent first"
        return self.incumbent

    # --- asking ---------------------------------------------------------------------------

    def _may_ask(self, ahead: int) -> bool:
        """Whether to ask for another proposal; ``ahead``: how many may wait, ready, for a
        worker (asked at once, in threads; none when asked one at a time)."""
        return (
            not self._agent_done
            and (bool(self._unasked) or self._next_iteration <= self.iterations)
            # Asked at once, proposals may be asked ahead: they wait, ready, for the next
            # worker to free, so a slow agent does not leave it idle.
            and len(self._open) + len(self._asking) < self.max_in_flight + ahead
            and len(self._asking) < self.asks_in_flight
        )

    def _take_iteration(self) -> int:
        if self.stop.is_set() and self.pool:
            self.pool.drain()  # cancels what is in flight, waits for it, then raises the stop
        self.stop.check()
        if self._unasked:
            return self._unasked.pop(0)
        self._next_iteration += 1
        return self._next_iteration - 1

    def _ask_next(self) -> None:
        iteration = self._take_iteration()
        self.recorder.iteration_started(iteration, self.iterations, 1)
        inc = self._inc
        pending = [w.job.recipe for w in self._open.values()]
        proposal = self.session.ask(iteration, inc.recipe, inc.result, pending)
        self._answered_with(iteration, proposal, self.session, inc)

    def _ask_aside(self, agent: ThreadPoolExecutor) -> None:
        """Ask for a proposal in another thread; ``_take_answers`` records it."""
        iteration = self._take_iteration()
        self.recorder.iteration_started(iteration, self.iterations, 1)
        inc = self._inc
        pending = [w.job.recipe for w in self._open.values()]
        taken = {a.slot for a in self._asking}
        slot = min(set(range(self.asks_in_flight)) - taken)
        aside = self.session.aside()
        alongside = len(self._asking)  # asked before it and still thinking
        ask = (iteration, inc.recipe, inc.result, pending, slot, alongside)
        answer = agent.submit(aside.ask, *ask)
        self._asking.append(_Asking(iteration, inc, slot, aside, answer))

    def _answered(self) -> bool:
        return any(a.answer.done() for a in self._asking)

    def _take_answers(self) -> None:
        """Record the answers that came in (a stop records their cost only: the iterations
        are asked again on resume)."""
        for asking in [a for a in self._asking if a.answer.done()]:
            self._asking.remove(asking)
            self.session.rejoin(asking.session)
            proposal = asking.answer.result()  # a server gone (AgentUnreachable) stops it all
            if not self.stop.is_set():
                self._answered_with(asking.iteration, proposal, asking.session, asking.made_from)

    def _answered_with(
        self,
        iteration: int,
        proposal: Proposal | None,
        session: AgentSession,
        made_from: Incumbent,
    ) -> None:
        if proposal is None:
            # A failure costs this iteration only; an agent that gives up is asked no more.
            self._agent_done = iteration not in session.failed
            return
        self._propose(iteration, proposal, made_from)

    def _propose(self, iteration: int, proposal: Proposal, inc: Incumbent) -> None:
        """Record the proposal, made from the incumbent ``inc``, and set it going."""
        name = candidate_name(iteration, 0, 1)
        base = self.mode.base(name)
        recipe = inc.recipe.patched(proposal.patch)
        job = CandidateJob(
            iteration, 0, name, recipe, proposal, self.layout.candidate_dir(name), base
        )
        key = self.mode.key(recipe, proposal, base, self.epochs)
        waiting = _Waiting(job, key)
        if key in self.trained:
            waiting.same_as = self.trained[key].candidate
        else:
            waiting.same_as = next((w.job.name for w in self._open.values() if w.key == key), None)
        detail = self.mode.proposal_detail(job) | {"incumbent": inc.name}
        self.recorder.proposals([(job, waiting.same_as, detail)])
        self._open[name] = waiting
        if key in self.trained:
            past = self.trained[key]
            waiting.outcome = Finished(job, past.model, past.result, past.failure)
        elif waiting.same_as is not None:
            pass  # answered when its twin finishes
        elif name in self.prior.known:  # resumed: scored before the stop, not yet decided
            known = self.prior.known[name]
            self._trained(Finished(job, known.model, known.result, known.failure))
        else:
            self._queued.append(job)

    def _start_queued(self) -> None:
        """Start proposed candidates, in the order proposed, while a worker is free."""
        while self._queued and len(self.pool) < self.max_in_flight:
            job = self._queued.pop(0)
            fresh_work_dir(job, dispatched_before=self.prior.dispatched(job.name))
            self.pool.submit(job)

    # --- finishing and deciding -------------------------------------------------------------

    def _finished(self, f: Finished) -> None:
        name = f.job.name
        if name in self._repeating:  # a seed repeat: its would-be accept may be judged
            key = self._repeating.pop(name)
            if name in self._dropping:
                # Cancelled as unwanted: no decision can want it again (its candidate is
                # decided, or its incumbent replaced for good), so it is not remembered.
                self._dropping.discard(name)
            else:
                self.trained[key] = PastTraining.of(f)
        else:
            self._trained(f)
        self._decide_known()

    def _trained(self, f: Finished) -> None:
        """A training's outcome: remembered, and the answer to the proposals that wait on it."""
        waiting = self._open[f.job.name]
        waiting.outcome = f
        self.trained[waiting.key] = PastTraining.of(f)
        for twin in self._open.values():
            if twin.same_as == f.job.name and twin.outcome is None:
                twin.outcome = Finished(twin.job, f.model, f.result, f.failure)

    def _decide_known(self) -> None:
        """Decide every open proposal whose outcome is known, in the order they were made
        (a would-be accept waiting for its seed repeats stays open); then drop the seed
        repeats that no waiting decision needs any more."""
        self._wanted = set()
        for name in [n for n, w in self._open.items() if w.outcome is not None]:
            self._decide(name)
        self._drop_unwanted_repeats()

    def _drop_unwanted_repeats(self) -> None:
        """A would-be accept decided without its repeats (its incumbent was replaced and the
        rule no longer accepts it against the new one) leaves them unwanted: queued ones are
        dropped, training ones cancelled (a GPU freed for the next candidate)."""
        for name, key in list(self._repeating.items()):
            if key in self._wanted or name in self._dropping:
                continue
            queued = [job for job in self._queued if job.name == name]
            if queued:
                self._queued.remove(queued[0])
                del self._repeating[name]
            else:
                self._dropping.add(name)
                self.pool.cancel(name)

    def _decide(self, name: str) -> bool:
        """Decide ``name`` against the incumbent of now; False when a would-be accept waits
        for its seed repeats (noise-aware acceptance), which are set going."""
        waiting = self._open[name]
        f = waiting.outcome
        assert f is not None
        inc = self._inc
        decision = decide(
            f.result, inc.result, failure=f.failure, min_improvement=self.min_improvement
        )
        noise = None
        if decision.verdict == "ACCEPT" and self.noise is not None and self.noise.seeds > 1:
            judged = self._over_seeds(f, inc, self.noise)
            if judged is None:
                return False
            decision, noise = judged
        del self._open[name]
        if waiting.same_as is not None:
            reason = f"same training as {waiting.same_as}, not retrained; {decision.reason}"
            decision = Decision(verdict=decision.verdict, reason=reason)
        self.decided(f, decision, inc.name, noise)
        if decision.verdict == "ACCEPT" and f.model is not None and f.result is not None:
            self.incumbent = self.accepted(f)
            self._incumbents[self.incumbent.name] = self.incumbent
        return True

    def _over_seeds(
        self, f: Finished, inc: Incumbent, noise: NoiseConfig
    ) -> tuple[Decision, dict[str, Any]] | None:
        """The comparison over seeds of ``f`` and the incumbent of now, once every repeat it
        needs has trained; until then None, with the missing repeats queued ahead of new
        candidates while the others keep running. Planned again at each call: an incumbent
        replaced meanwhile needs its own repeats."""
        plan = plan_repeats(
            f.job.iteration, f, inc, noise.seeds, self.layout, self.mode, self.epochs, self.trained
        )
        new = [r for r in plan.repeats if r[0].name not in self._repeating]
        self.recorder.repeats(new)
        for job, _, _ in reversed(new):
            key = plan.key_of(job.name)
            if job.name in self.prior.known:  # resumed: trained and scored before the stop
                known = self.prior.known[job.name]
                self.trained[key] = PastTraining.of(
                    Finished(job, known.model, known.result, known.failure)
                )
            else:
                self._repeating[job.name] = key
                self._queued.insert(0, job)  # a decision waits on it: ahead of new candidates
        if any(key not in self.trained for key in plan.to_train):
            self._wanted.update(plan.to_train)
            return None
        return plan.judge(self.trained, noise.k, self.min_improvement)

    # --- resuming ---------------------------------------------------------------------------

    def _replay(self) -> None:
        """What the ledger records, in its order: its proposals are made again from the
        incumbent of their moment (not asked for again), its decisions taken again from the
        recorded outcomes. Proposals it left undecided are in flight when this returns."""
        for kind, name, iteration in self.prior.order:
            if kind == "proposal":
                [proposal] = self.prior.proposals[iteration]
                made_from = self._incumbents.get(self.prior.made_from.get(name, ""), self._inc)
                self._propose(iteration, proposal, made_from)
                self._next_iteration = max(self._next_iteration, iteration + 1)
                continue
            waiting = self._open.get(name)
            if waiting is None or waiting.outcome is None or not self._decide(name):
                raise MlipilotError(
                    f"{self.layout.root}: the ledger decides {name} but its outcome (or a "
                    "seed repeat's) cannot be read back (a model file gone?), so the campaign "
                    "cannot be replayed"
                )
        # Asked before the stop and never answered (asked at once with others): asked again.
        answered = {it for kind, _, it in self.prior.order if kind == "proposal"}
        self._unasked = [
            it
            for it in range(1, self._next_iteration)
            if it not in answered and it not in self.prior.agent_failed
        ]
