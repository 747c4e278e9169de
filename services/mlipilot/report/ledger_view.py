"""A campaign's run folder read back: the ledger's events, grouped, and the scorecard as run.

Everything the report shows comes from here, so the report needs nothing but the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlipilot.errors import MlipilotError
from mlipilot.ledger import CampaignHistory, Ledger, LedgerEvent, check_chain
from mlipilot.ledger.events import ProposalDetail
from mlipilot.recipe import Recipe
from mlipilot.scoring.spec import ScorecardSpec, load_spec

BASELINE_CANDIDATE = "it000"


@dataclass(frozen=True)
class RunView:
    run_dir: Path
    spec: ScorecardSpec
    spec_hash: str
    started: LedgerEvent | None
    finished: LedgerEvent | None
    decisions: list[LedgerEvent]  # in ledger order, one per candidate (several per iteration)
    proposals: dict[str, LedgerEvent]  # the last proposal recorded for each candidate name
    evaluations: dict[str, LedgerEvent]  # successful scorings by candidate name
    # Conversations with an LLM agent (prompt/completion tokens in ``detail``), in ledger
    # order; empty for agents without a model. Failed conversations spent tokens too.
    agent_calls: list[LedgerEvent] = field(default_factory=list)
    # Models checked on physics the scorecard never sees (campaign/validation_stage.py).
    validations: list[LedgerEvent] = field(default_factory=list)
    history: CampaignHistory | None = None  # every row, grouped (ledger/history.py)

    @property
    def baseline(self) -> Recipe:
        if self.started is not None and self.started.recipe is not None:
            return Recipe.model_validate(self.started.recipe)
        return self.recipe_of(BASELINE_CANDIDATE)

    def recipe_of(self, candidate: str) -> Recipe:
        proposal = self.proposals.get(candidate)
        if proposal is None or proposal.recipe is None:
            raise MlipilotError(
                f"{self.run_dir}: the ledger has no recipe for candidate {candidate}"
            )
        return Recipe.model_validate(proposal.recipe)

    def trained_candidate(self, candidate: str) -> str:
        """The candidate folder that holds this candidate's model and MD traces: a duplicate
        proposal was answered from an earlier training and has none of its own."""
        proposal = self.proposals.get(candidate)
        if proposal is not None and proposal.status == "duplicate":
            return proposal.details(ProposalDetail).duplicate_of or candidate
        return candidate

    def evaluation_of(self, candidate: str) -> LedgerEvent | None:
        """The scoring of this candidate (of the training it reused, for a duplicate)."""
        return self.evaluations.get(self.trained_candidate(candidate))

    def campaign_setting(self, *keys: str) -> Any:
        """A value from the campaign as recorded at the start, e.g. ``("budget", "epochs")``."""
        return self.history.setting(*keys) if self.history is not None else None


def load_run(run_dir: Path) -> RunView:
    """Read a run folder; a folder without a ledger, scorecard or decisions is an error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MlipilotError(f"{run_dir}: not a folder (expected a campaign run folder)")
    ledger_path = run_dir / "ledger.sqlite"
    if not ledger_path.is_file():
        raise MlipilotError(f"{run_dir}: no ledger.sqlite there, so no campaign to report on")
    check_chain(ledger_path)  # a report of a ledger changed after it was written would mislead
    spec_path = run_dir / "scorecard.yaml"
    if not spec_path.is_file():
        raise MlipilotError(f"{run_dir}: no scorecard.yaml there (the scorecard as run)")
    spec, spec_hash = load_spec(spec_path)
    with Ledger(ledger_path) as ledger:
        history = CampaignHistory.of(ledger.events())
    if not history.decisions:
        raise MlipilotError(f"{run_dir}: ledger.sqlite has no decisions yet, nothing to report")
    return run_view(run_dir, spec, spec_hash, history)


def run_view(
    run_dir: Path, spec: ScorecardSpec, spec_hash: str, history: CampaignHistory
) -> RunView:
    """The view of events already read (a live campaign's, which may have no decision yet)."""
    return RunView(
        run_dir=run_dir,
        spec=spec,
        spec_hash=spec_hash,
        started=history.started,
        finished=history.ending,
        decisions=history.decisions,
        proposals=history.proposals,
        evaluations=history.scored(),
        agent_calls=history.agent_calls,
        validations=history.validations,
        history=history,
    )
