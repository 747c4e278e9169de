"""Kill -9 at each named point of a real campaign, then resume: nothing lost, nothing twice.

One campaign (baseline + 2 iterations, real MACE training and MD) runs as a subprocess and is
killed with SIGKILL at five points in turn, each resumed by ``mlipilot run --resume`` that is
itself killed at the next point (``MLIPILOT_KILL_AT``, see ``mlipilot/faults.py``). Each test
below checks the ledger as the kill left it and as the next resume continued it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from factories import tiny_spec, write_tiny_campaign

from mlipilot.ledger import LedgerEvent, read_events
from mlipilot.model_files import read_package

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "mlipilot.cli"]
# In the order the campaign meets them; ``decision:2`` is in the last iteration.
KILL_POINTS = ["agent:1", "training:1", "md:1", "after_decision:1", "decision:2"]


@dataclass
class Kill:
    point: str
    returncode: int
    stderr: str
    before: list[LedgerEvent]  # the ledger when this process started
    after: list[LedgerEvent]  # the ledger as the kill left it
    orphans: list[str]  # processes of this run still alive after the kill


@dataclass
class Chain:
    run_dir: Path
    kills: dict[str, Kill]
    final: list[LedgerEvent]
    final_rc: int
    final_stdout: str

    def resumed_after(self, point: str) -> list[LedgerEvent]:
        """What the process started right after the kill at ``point`` wrote."""
        following = KILL_POINTS.index(point) + 1
        upto = self.kills[KILL_POINTS[following]].after if following < len(KILL_POINTS) else None
        rows = upto if upto is not None else self.final
        return rows[len(self.kills[point].after) :]


def _env(point: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLIPILOT_KILL_AT"}
    if point:
        env["MLIPILOT_KILL_AT"] = point
    return env


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that name ``text`` (a run folder, say)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and "pytest" not in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    tmp = tmp_path_factory.mktemp("resume")
    spec = tiny_spec(md_seeds=(0,))
    spec["md"] |= {"nvt_steps": 10, "nve_steps": 5}  # MD only has to be reached, and killed
    campaign = write_tiny_campaign(
        tmp, name="resume", data_path=tmp / "data", spec=spec, iterations=2, epochs=2
    )
    runs = tmp / "runs"
    kills: dict[str, Kill] = {}
    run_dir: Path | None = None
    for point in KILL_POINTS:
        before = read_events(run_dir / "ledger.sqlite") if run_dir else []
        args = ["run", "--resume", str(run_dir)] if run_dir else ["run", str(campaign)]
        proc = subprocess.run(
            [*CLI, *args, "--out", str(runs)] if not run_dir else [*CLI, *args],
            env=_env(point),
            capture_output=True,
            text=True,
            timeout=600,
        )
        run_dir = run_dir or next(runs.iterdir())
        time.sleep(0.5)  # a child killed by its parent's death needs a moment to go
        orphans = _processes_mentioning(str(run_dir))
        after = read_events(run_dir / "ledger.sqlite")
        kills[point] = Kill(point, proc.returncode, proc.stderr, before, after, orphans)
    assert run_dir is not None
    proc = subprocess.run(
        [*CLI, "run", "--resume", str(run_dir)],
        env=_env(None),
        capture_output=True,
        text=True,
        timeout=600,
    )
    final = read_events(run_dir / "ledger.sqlite")
    return Chain(run_dir, kills, final, proc.returncode, proc.stdout + proc.stderr)


def _rows(events: list[LedgerEvent], kind: str, candidate: str | None = None) -> list[LedgerEvent]:
    return [
        e for e in events if e.event == kind and (candidate is None or e.candidate == candidate)
    ]


def _resumed_row(rows: list[LedgerEvent]) -> LedgerEvent:
    assert rows and rows[0].event == "campaign_resumed", [e.event for e in rows[:3]]
    return rows[0]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_each_kill_was_a_real_sigkill_that_left_no_end_and_no_orphan(
    chain: Chain, point: str
) -> None:
    kill = chain.kills[point]
    assert kill.returncode == -signal.SIGKILL, kill.stderr[-2000:]
    assert not _rows(kill.after[len(kill.before) :], "campaign_finished")
    assert kill.orphans == [], f"still running after the kill at {point}: {kill.orphans}"
    # The history before this process is untouched, row for row.
    assert kill.after[: len(kill.before)] == kill.before


def test_kill_during_the_agent_call(chain: Chain) -> None:
    kill = chain.kills["agent:1"]
    assert _rows(kill.after, "iteration_started")[-1].iteration == 1
    assert not _rows(kill.after, "proposal", "it001"), "the proposal died with the agent call"
    resumed = _resumed_row(chain.resumed_after("agent:1"))
    assert resumed.detail["train_again"] == [] and resumed.detail["decided"] == ["it000"]
    # The resumed process asked the agent again; iteration 1 is not started twice.
    assert len(_rows(chain.final, "iteration_started")) == 3
    assert len(_rows(chain.final, "proposal", "it001")) == 1


def test_kill_during_training(chain: Chain) -> None:
    kill = chain.kills["training:1"]
    epochs = [e for e in _rows(kill.after, "progress", "it001") if e.status == "train"]
    assert epochs, "killed after an epoch of it001"
    assert not _rows(kill.after, "training", "it001")
    resumed = _resumed_row(chain.resumed_after("training:1"))
    assert resumed.detail["train_again"] == ["it001"]
    # The killed attempt's folder is kept beside the new one, with its log.
    assert (chain.run_dir / "candidates" / "it001.interrupted" / "train.log").is_file()
    assert len(_rows(chain.final, "proposal", "it001")) == 1, "the proposal is not re-asked"


def test_kill_during_md(chain: Chain) -> None:
    kill = chain.kills["md:1"]
    (training,) = _rows(kill.after, "training", "it001")
    assert training.status == "ok"
    assert any(e.status == "md" for e in _rows(kill.after, "progress", "it001"))
    assert not _rows(kill.after, "evaluation", "it001")
    resumed = _resumed_row(chain.resumed_after("md:1"))
    assert resumed.detail["train_again"] == ["it001"]
    assert (chain.run_dir / "candidates" / "it001.interrupted-2" / "train.log").is_file()
    again = chain.resumed_after("md:1")
    assert _rows(again, "training", "it001") and _rows(again, "evaluation", "it001")


def test_kill_between_the_decision_and_the_next_iteration(chain: Chain) -> None:
    kill = chain.kills["after_decision:1"]
    assert len(_rows(kill.after, "decision", "it001")) == 1
    assert not any(e.iteration == 2 for e in _rows(kill.after, "iteration_started"))
    again = chain.resumed_after("after_decision:1")
    resumed = _resumed_row(again)
    assert resumed.detail["train_again"] == []
    assert resumed.detail["decided"] == ["it000", "it001"]
    assert not _rows(again, "decision", "it001") and not _rows(again, "training", "it001")


def test_kill_after_recording_a_decision_before_copying_the_incumbent(chain: Chain) -> None:
    kill = chain.kills["decision:2"]
    assert len(_rows(kill.after, "decision", "it002")) == 1
    again = chain.resumed_after("decision:2")
    assert not _rows(again, "decision") and not _rows(again, "training")


def test_the_resumed_campaign_finishes_with_one_decision_per_candidate(chain: Chain) -> None:
    assert chain.final_rc == 0, chain.final_stdout[-3000:]
    (end,) = [e for e in _rows(chain.final, "campaign_finished")]
    assert end.status == "finished" and end is chain.final[-1]
    decisions = [e.candidate for e in _rows(chain.final, "decision")]
    assert decisions == ["it000", "it001", "it002"]
    assert len(_rows(chain.final, "campaign_resumed")) == len(KILL_POINTS)
    assert len(_rows(chain.final, "campaign_started")) == 1
    # Every kill's ledger is a prefix of the final one: no row was changed or lost.
    for kill in chain.kills.values():
        assert chain.final[: len(kill.after)] == kill.after
    # The incumbent's model is in best.model, also after a kill between decision and copy.
    incumbent = [e for e in _rows(chain.final, "decision") if e.decision in ("BASELINE", "ACCEPT")]
    training = _rows(chain.final, "training", incumbent[-1].candidate)[-1]
    model = read_package(Path(unquote(urlparse(training.detail["model"]).path)))
    best = torch.load(chain.run_dir / "best.model", map_location="cpu", weights_only=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in best.state_dict().items())
    tsv = (chain.run_dir / "results.tsv").read_text().splitlines()
    assert [line.split("\t")[1] for line in tsv[1:]] == ["it000", "it001", "it002"]


def test_a_finished_campaign_is_not_resumed(chain: Chain) -> None:
    before = read_events(chain.run_dir / "ledger.sqlite")
    proc = subprocess.run(
        [*CLI, "run", "--resume", str(chain.run_dir)],
        env=_env(None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "nothing to resume" in proc.stderr and "Traceback" not in proc.stderr
    assert read_events(chain.run_dir / "ledger.sqlite") == before
