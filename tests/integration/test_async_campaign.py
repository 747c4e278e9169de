"""An asynchronous campaign (``budget.scheduler: async``, two in flight) on real Ray: real MACE
training on trainer actors, MD as Ray tasks, killed with SIGKILL after its first decision and
resumed.

The campaign runs as a subprocess that joins the test session's Ray instance (``ray_address:
auto``), so the kill is a real ``kill -9`` of the driver while its other candidate trains. The
checks read only the ledger: every decision is the scorecard's rule applied to the candidate's
result and the incumbent of its moment, which the ledger's order determines; the resume keeps
what was decided before the kill and trains again only what was in flight.
"""

from __future__ import annotations

from datetime import datetime

import pytest
import yaml
from factories import run_cli, tiny_spec, write_tiny_campaign

from mlipilot.campaign.decision import decide
from mlipilot.ledger import LedgerEvent, read_events, score_result
from mlipilot.ledger.events import DecisionDetail, ProposalDetail

pytestmark = pytest.mark.slow

IN_FLIGHT = 2
ITERATIONS = 4


@pytest.fixture(scope="module")
def killed_and_resumed(ray_session, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("async")
    spec = tiny_spec(md_seeds=(0,))
    spec["md"] |= {"nvt_steps": 20, "nve_steps": 10}
    path = write_tiny_campaign(
        tmp,
        name="async",
        data_path=tmp / "data",
        spec=spec,
        iterations=ITERATIONS,
        epochs=3,
        scheduler="async",
        max_in_flight=IN_FLIGHT,
    )
    campaign = yaml.safe_load(path.read_text())
    campaign["compute"] = {"torch_threads": 1, "ray_address": "auto"}  # this session's Ray
    path.write_text(yaml.safe_dump(campaign))
    runs = tmp / "runs"
    killed = run_cli(["run", str(path), "--out", str(runs)], kill_at="after_decision:1")
    run_dir = next(runs.iterdir())
    at_kill = read_events(run_dir / "ledger.sqlite")
    resumed = run_cli(["run", "--resume", str(run_dir)], kill_at=None)
    final = read_events(run_dir / "ledger.sqlite")
    return killed, at_kill, resumed, final


def _rows(events: list[LedgerEvent], kind: str) -> list[LedgerEvent]:
    return [e for e in events if e.event == kind]


def _when(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def test_the_kill_was_a_real_sigkill_after_a_decision_with_a_candidate_in_flight(
    killed_and_resumed,
) -> None:
    killed, at_kill, resumed, final = killed_and_resumed
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not _rows(at_kill, "campaign_finished")
    decided = {e.candidate for e in _rows(at_kill, "decision")}
    proposed = {e.candidate for e in _rows(at_kill, "proposal")}
    assert "it001" in decided
    assert proposed - decided, "nothing was in flight at the kill"
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert _rows(final, "campaign_finished")[-1].status == "finished"


def test_the_resume_keeps_every_decision_made_before_the_kill_and_decides_each_once(
    killed_and_resumed,
) -> None:
    _, at_kill, _, final = killed_and_resumed
    before = [(e.id, e.candidate, e.decision, e.reason) for e in _rows(at_kill, "decision")]
    after = [(e.id, e.candidate, e.decision, e.reason) for e in _rows(final, "decision")]
    assert after[: len(before)] == before  # untouched, and nothing written twice
    names = [e.candidate for e in _rows(final, "decision")]
    assert sorted(names) == ["it000"] + [f"it{i:03d}" for i in range(1, ITERATIONS + 1)]
    # Of what was proposed before the kill, only what had not finished trains again.
    proposed = {e.candidate for e in _rows(at_kill, "proposal")}
    unfinished = proposed - {e.candidate for e in _rows(at_kill, "evaluation")}
    resumed_row = _rows(final, "campaign_resumed")[0]
    assert set(resumed_row.detail["train_again"]) == unfinished
    trained_after = {e.candidate for e in _rows(final[final.index(resumed_row) :], "training")}
    assert trained_after & proposed == unfinished


def test_every_decision_is_the_rule_against_the_incumbent_of_its_moment(
    killed_and_resumed,
) -> None:
    """Replay the ledger in its order: the incumbent each proposal was made from and each
    decision was taken against are the ones its rows name, and the verdict is the rule's."""
    *_, final = killed_and_resumed
    results = {e.candidate: score_result(e) for e in _rows(final, "evaluation") if e.metrics}
    incumbent = None
    recipes: dict[str, dict] = {}
    for e in final:
        if e.event == "proposal":
            recipes[e.candidate] = e.recipe
            if e.iteration:
                assert e.details(ProposalDetail).incumbent == incumbent
                # Made from that incumbent's recipe: its patch on top gives the recipe trained.
                assert {**recipes[incumbent], **e.patch} == e.recipe
        elif e.event == "decision" and e.iteration:
            assert e.details(DecisionDetail).incumbent == incumbent
            expected = decide(results.get(e.candidate), results[incumbent], failure="-")
            assert e.decision == expected.verdict, (e.candidate, e.reason)
            if e.decision == "ACCEPT":
                incumbent = e.candidate
        elif e.event == "decision":
            incumbent = "it000"
    assert any(e.decision == "ACCEPT" for e in _rows(final, "decision"))  # something to follow


def test_candidates_run_side_by_side_and_the_agent_is_asked_while_others_train(
    killed_and_resumed,
) -> None:
    *_, final = killed_and_resumed
    open_, most = set(), 0
    for e in final:  # never more than max_in_flight proposed and undecided
        if e.event == "proposal" and e.iteration:
            open_.add(e.candidate)
            most = max(most, len(open_))
        elif e.event == "decision":
            open_.discard(e.candidate)
    assert most == IN_FLIGHT
    trainings = [e for e in _rows(final, "training") if e.iteration and e.status == "ok"]
    overlapping = [
        (a.candidate, b.candidate)
        for a in trainings
        for b in trainings
        if a.candidate < b.candidate
        and max(_when(a.started_at), _when(b.started_at))
        < min(_when(a.finished_at), _when(b.finished_at))
    ]
    assert overlapping, "no two trainings ran at once"
    # A proposal after the first two was asked for while another candidate was training or
    # being scored (between its training's start and its scoring's end): the agent's time
    # overlapped the workers', where a synchronous campaign would have them all wait.
    scored = {e.candidate: _when(e.finished_at) for e in _rows(final, "evaluation")}
    later = [e for e in _rows(final, "proposal") if e.iteration and e.iteration > IN_FLIGHT]
    asked_while_busy = [
        p.candidate
        for p in later
        for t in trainings
        if t.candidate != p.candidate
        and _when(t.started_at) < _when(p.ts) < scored.get(t.candidate, _when(t.finished_at))
    ]
    assert asked_while_busy
