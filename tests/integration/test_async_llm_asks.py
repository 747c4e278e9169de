"""An asynchronous campaign that asks its LLM agent for two proposals at once
(``budget.asks_in_flight: 2``), killed with SIGKILL while one of its asks is unanswered, and
resumed.

Real: MACE training and MD in child processes, SQLite, the LLM agent's HTTP to an
OpenAI-compatible server on loopback. Scripted (vLLM cannot serve a 32B model here): the
server's answers. It answers the first two asks only after both have arrived, so they must be
in flight together; it holds it003's ask until the killed process is gone and answers it004's
(asked with it) at once, so the kill finds an earlier ask unanswered behind a later one, and
the resumed campaign asks it again.
"""

from __future__ import annotations

import threading
import time

import pytest
import yaml
from factories import run_cli, write_tiny_campaign
from llm_server import calls, serve, tool_call

from mlipilot.campaign.decision import decide
from mlipilot.ledger import LedgerEvent, read_events, score_result
from mlipilot.ledger.events import DecisionDetail, ProposalDetail

pytestmark = pytest.mark.slow

MODEL = "Qwen/Qwen3-32B"
ITERATIONS = 4
# What the n-th request proposes (it003's first ask, the third or fourth request, is held
# until the kill and its answer never reaches the killed process).
PATCHES = [
    {"e0s": "average"},
    {"lr": 0.01},
    {"lr": 0.005},
    {"lr": 0.02},
    {"lr": 0.003},
    {"lr": 0.004},
    {"lr": 0.006},
]


class Script:
    """The server's steps: the first two meet (each waits until both have arrived), it003's
    ask waits for ``released``, the rest answer at once. it003 and it004 are asked together,
    so which of their requests comes third is a race: the held one is found by its prompt."""

    def __init__(self) -> None:
        self.both_asked = threading.Barrier(2, timeout=60)
        self.released = threading.Event()
        self.asked_together = False

    def steps(self) -> list:
        return [self._step(n) for n in range(len(PATCHES))]

    def _step(self, n: int):
        def answer(request: dict) -> dict:
            if n < 2:
                self.both_asked.wait()  # raises (and the test fails) unless both are in flight
                self.asked_together = True
            elif "Iteration 3 of" in _prompt(request) and not self.released.is_set():
                self.released.wait(timeout=600)
            hypothesis = f"try {PATCHES[n]}"
            return calls(tool_call("propose", {"hypothesis": hypothesis, "patch": PATCHES[n]}))

        return answer


def _prompt(request: dict) -> str:
    return "\n".join(str(m.get("content") or "") for m in request["messages"])


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("async_asks")
    path = write_tiny_campaign(
        tmp,
        name="asks",
        data_path=tmp / "data",
        iterations=ITERATIONS,
        epochs=2,
        scheduler="async",
        max_in_flight=3,
        asks_in_flight=2,
    )
    campaign = yaml.safe_load(path.read_text())
    campaign["compute"] = {"torch_threads": 1}
    script = Script()
    with serve([MODEL], script.steps()) as server:
        campaign["agent"] = {"kind": "llm", "base_url": server.url, "model": MODEL}
        path.write_text(yaml.safe_dump(campaign))
        runs = tmp / "runs"
        # The first decision: it001 and it002 were asked together, and it003 asked since.
        killed = run_cli(["run", str(path), "--out", str(runs)], "after_decision")
        run_dir = next(runs.iterdir())
        at_kill = read_events(run_dir / "ledger.sqlite")
        script.released.set()
        time.sleep(0.5)  # the held answer is written to a closed connection, then dropped
        resumed = run_cli(["run", "--resume", str(run_dir)], kill_at=None)
        final = read_events(run_dir / "ledger.sqlite")
        requests = list(server.requests)
    return script, killed, at_kill, resumed, final, requests


def _rows(events: list[LedgerEvent], kind: str) -> list[LedgerEvent]:
    return [e for e in events if e.event == kind]


def test_two_proposals_were_asked_at_once_each_told_of_the_other(killed_and_resumed) -> None:
    script, killed, at_kill, *_, requests = killed_and_resumed
    assert script.asked_together  # the server held both first asks until both had arrived
    assert killed.returncode == -9, killed.stderr[-2000:]
    # The second asked was told of the first, and asked for its second-best idea.
    first_two = [r["messages"][1]["content"] for r in requests[:2]]
    told = ["1 other proposal is being asked of you at this moment" in t for t in first_two]
    assert sorted(told) == [False, True]
    assert "this is number 2" in first_two[told.index(True)]
    # Both proposals were recorded, each with its LLM call, before the kill.
    proposals = [e.candidate for e in _rows(at_kill, "proposal") if e.iteration]
    assert {"it001", "it002"} <= set(proposals)
    calls_ = {(e.candidate, e.status) for e in _rows(at_kill, "agent_call")}
    assert {("it001", "proposed"), ("it002", "proposed")} <= calls_


def test_the_ask_unanswered_at_the_kill_is_asked_again_and_nothing_is_lost(
    killed_and_resumed,
) -> None:
    _, _, at_kill, resumed, final, requests = killed_and_resumed
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert _rows(final, "campaign_finished")[-1].status == "finished"
    started = {e.iteration for e in _rows(at_kill, "iteration_started")}
    answered = {e.iteration for e in _rows(at_kill, "proposal")}
    # it003 was asked, unanswered when the process died; it004, asked after it, was answered.
    assert 3 in started and 3 not in answered and 4 in answered
    resumed_at = final.index(_rows(final, "campaign_resumed")[0])
    [it003] = [e for e in _rows(final, "proposal") if e.candidate == "it003"]
    assert final.index(it003) > resumed_at and it003.patch == PATCHES[4]
    # Every iteration proposed once, trained, decided once; one LLM call recorded for each.
    decided = [e.candidate for e in _rows(final, "decision")]
    assert sorted(decided) == ["it000"] + [f"it{i:03d}" for i in range(1, ITERATIONS + 1)]
    call_rows = [e.candidate for e in _rows(final, "agent_call")]
    assert sorted(call_rows) == [f"it{i:03d}" for i in range(1, ITERATIONS + 1)]
    # Before the kill's decisions stay as they were.
    before = [(e.id, e.candidate, e.decision) for e in _rows(at_kill, "decision")]
    after = [(e.id, e.candidate, e.decision) for e in _rows(final, "decision")]
    assert after[: len(before)] == before
    assert len(requests) == ITERATIONS + 1  # the held one, and each iteration answered once


def test_each_proposal_is_its_incumbents_recipe_patched_and_each_decision_the_rule(
    killed_and_resumed,
) -> None:
    """A proposal records the incumbent it was asked from (which may have been replaced
    while the agent thought); its recipe is that incumbent's, patched. Each decision is the
    rule against the incumbent of its moment."""
    *_, final, _ = killed_and_resumed
    results = {e.candidate: score_result(e) for e in _rows(final, "evaluation") if e.metrics}
    recipes: dict[str, dict] = {}
    incumbents: list[str] = []
    for e in final:
        if e.event == "proposal":
            recipes[e.candidate] = e.recipe
            if e.iteration:
                made_from = e.details(ProposalDetail).incumbent
                assert made_from in incumbents
                assert {**recipes[made_from], **e.patch} == e.recipe
        elif e.event == "decision" and e.iteration:
            assert e.details(DecisionDetail).incumbent == incumbents[-1]
            expected = decide(results.get(e.candidate), results[incumbents[-1]], failure="-")
            assert e.decision == expected.verdict, (e.candidate, e.reason)
            if e.decision == "ACCEPT":
                incumbents.append(e.candidate)
        elif e.event == "decision":
            incumbents.append("it000")
