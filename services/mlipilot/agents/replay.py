"""An agent that proposes again what a recorded campaign proposed, in the same order.

``agent: {kind: replay, ledger: runs/<campaign>}`` re-runs another campaign's proposals
(iteration by iteration, candidate by candidate) from its ledger: to check a result on other
hardware or a changed trainer, or to replay an LLM campaign without paying for the model
again. Each patch applies to the replaying campaign's own incumbent. When the recording has
no proposal left for an iteration, the agent gives up and the campaign ends.
"""

from __future__ import annotations

from pathlib import Path

from mlipilot.agents.base import AgentGaveUp, CampaignState, Proposal
from mlipilot.errors import MlipilotError
from mlipilot.ledger import read_events


def _candidate_index(name: str) -> int:
    """``it003`` -> 0, ``it003-2`` -> 1 (the naming of ``campaign.candidates``)."""
    _, _, number = name.partition("-")
    return int(number) - 1 if number.isdigit() else 0


def recorded_proposals(ledger: Path) -> dict[int, list[Proposal]]:
    """The proposals a ledger records after the baseline, by iteration, in candidate order."""
    path = ledger / "ledger.sqlite" if ledger.is_dir() else ledger
    try:
        events = read_events(path)
    except FileNotFoundError:
        raise MlipilotError(
            f"agent.ledger: no ledger at {path} (give a run folder, runs/<campaign>)",
            fields=("agent.ledger",),
        ) from None
    found: dict[int, dict[int, Proposal]] = {}
    for e in events:
        if e.event != "proposal" or not e.iteration or not e.patch or not e.candidate:
            continue
        proposal = Proposal(
            hypothesis=e.hypothesis or "(recorded without hypothesis)", patch=e.patch
        )
        found.setdefault(e.iteration, {})[_candidate_index(e.candidate)] = proposal
    if not found:
        raise MlipilotError(
            f"agent.ledger: {path} records no proposal after the baseline", fields=("agent.ledger",)
        )
    return {it: [p for _, p in sorted(ps.items())] for it, ps in sorted(found.items())}


class ReplayAgent:
    def __init__(self, ledger: Path) -> None:
        self.source = Path(ledger)
        self.proposals = recorded_proposals(self.source)
        self.name = (
            f"replay:{self.source.name if self.source.is_dir() else self.source.parent.name}"
        )

    def propose(self, state: CampaignState) -> Proposal:
        recorded = self.proposals.get(state.iteration, [])
        index = state.slot  # the candidate's place in its iteration
        if index >= len(recorded):
            raise AgentGaveUp(
                f"the recording has no proposal {index + 1} for iteration {state.iteration}"
            )
        return recorded[index]
