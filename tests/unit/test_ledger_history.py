"""The typed ledger: each kind of row's detail read through one model, and a campaign's history
built once from the rows."""

from __future__ import annotations

import pytest

from mlipilot.ledger import CampaignHistory, LedgerEvent, score_result
from mlipilot.ledger.events import (
    DETAILS,
    AgentCallDetail,
    EvaluationDetail,
    ProposalDetail,
    StartedDetail,
    TrainingDetail,
)


def row(event: str, candidate: str | None = None, **columns) -> LedgerEvent:
    iteration = int(candidate[2:5]) if candidate else None
    return LedgerEvent(
        campaign="c", event=event, candidate=candidate, iteration=iteration, **columns
    )


def test_every_kind_of_event_has_one_detail_model() -> None:
    kinds = LedgerEvent.model_fields["event"].annotation.__args__
    assert set(DETAILS) == set(kinds)


def test_a_detail_missing_a_field_reads_its_default_and_keeps_what_it_does_not_know() -> None:
    e = row("training", "it001", detail={"model": "file:///m.pt", "added_later": [1, 2]})
    detail = e.details(TrainingDetail)
    assert detail.model == "file:///m.pt"
    assert detail.curve == [] and detail.log is None  # written before these existed
    assert detail.model_extra == {"added_later": [1, 2]}
    assert row("training", "it001").details(TrainingDetail).model is None  # no detail at all


def test_an_unreadable_value_reads_as_its_default_rather_than_breaking_a_report() -> None:
    e = row("agent_call", "it001", detail={"prompt_tokens": "many", "completion_tokens": -5})
    detail = e.details(AgentCallDetail)
    assert (detail.prompt_tokens, detail.completion_tokens, detail.total_tokens) == (0, 0, 0)
    good = row("agent_call", "it001", detail={"prompt_tokens": "120", "completion_tokens": 30})
    assert good.details(AgentCallDetail).total_tokens == 150


def test_reading_a_row_as_another_kind_is_a_bug() -> None:
    with pytest.raises(TypeError, match="a proposal row has no TrainingDetail"):
        row("proposal", "it001").details(TrainingDetail)


def test_the_history_groups_rows_by_candidate_and_a_new_training_drops_the_old_scoring() -> None:
    started = row("campaign_started", detail={"campaign": {"budget": {"iterations": 7}}})
    events = [
        started,
        row("proposal", "it001", hypothesis="first"),
        row("proposal", "it001", hypothesis="recorded again"),
        row("training", "it001", status="ok", detail={"model": "file:///a"}),
        row("evaluation", "it001", metrics={"x": 1.0}, feasible=True, composite=1.0),
        row("training", "it002", status="ok"),
        row("evaluation", "it002", metrics={"x": 2.0}),
        row("training", "it002", status="ok"),  # killed and trained again: no scoring yet
        row("evaluation", "it003", status="failed"),  # no metrics: not scored
        row("decision", "it001", decision="ACCEPT"),
        row("agent_call", "it001", detail={"prompt_tokens": 100, "completion_tokens": 20}),
        row("agent_call", "it002", detail={"prompt_tokens": 50, "completion_tokens": 5}),
        row("campaign_finished", status="finished"),
    ]
    history = CampaignHistory.of(events)
    assert history.started is started and history.ending is events[-1]
    assert history.proposals["it001"].hypothesis == "recorded again"
    assert set(history.evaluations) == {"it001", "it003"}  # it002's belonged to its first try
    assert set(history.scored()) == {"it001"}
    assert [d.candidate for d in history.decisions] == ["it001"]
    assert history.setting("budget", "iterations") == 7
    assert history.setting("budget", "nothing", "deeper") is None
    assert history.tokens() == (150, 25)
    assert history.tokens_by_candidate() == {"it001": 120, "it002": 55}
    resumed = CampaignHistory.of([*events, row("campaign_resumed")])
    assert resumed.ending is None  # running again, or killed


def test_a_score_result_is_rebuilt_from_its_evaluation_row() -> None:
    constraint = {
        "metric": "energy_mae_meV_per_atom",
        "value": 12.0,
        "op": "<=",
        "threshold": 35.0,
        "unit": "meV/atom",
        "margin": 0.657,
        "violation": 0.0,
    }
    e = row(
        "evaluation",
        "it001",
        metrics={"energy_mae_meV_per_atom": 12.0},
        feasible=True,
        violation=0.0,
        composite=1.5,
        spec_hash="s",
        test_hash="t",
        detail={"scorecard": "cu-emt", "constraints": [constraint], "md_replicas": [{"T": 600}]},
    )
    result = score_result(e)
    assert (result.spec_name, result.spec_hash, result.composite) == ("cu-emt", "s", 1.5)
    assert result.constraints[0].threshold == 35.0
    assert result.details == {"md_replicas": [{"T": 600}]}
    assert e.details(EvaluationDetail).timings_s == {}
    assert row("campaign_started").details(StartedDetail).setting("name") is None
    assert row("proposal", "it002").details(ProposalDetail).duplicate_of is None
