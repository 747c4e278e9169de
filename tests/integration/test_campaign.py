"""A whole campaign on tiny settings: real data, real MACE training, real MD, real SQLite."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from factories import tiny_spec, write_tiny_campaign

from mlipilot.agents.base import CampaignState, Proposal
from mlipilot.campaign.decision import decide
from mlipilot.campaign.loop import run_campaign
from mlipilot.config import load_campaign
from mlipilot.data.dataset import file_sha256, open_dataset
from mlipilot.errors import MlipilotError
from mlipilot.ledger import Ledger
from mlipilot.model_files import PACKAGE_NAME, read_package
from mlipilot.scoring.result import ScoreResult

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


class ScriptedAgent:
    """A fixed list of proposals: makes the decision path of a real campaign predictable."""

    name = "scripted"

    def __init__(self, proposals: list[Proposal], kill_trainer_at: int | None = None) -> None:
        self.proposals = proposals
        self.kill_trainer_at = kill_trainer_at
        self.states: list[CampaignState] = []

    def propose(self, state: CampaignState) -> Proposal:
        self.states.append(state)
        if state.iteration == self.kill_trainer_at:
            threading.Thread(target=kill_next_trainer, daemon=True).start()
        return self.proposals[state.iteration - 1]


def kill_next_trainer(timeout_s: float = 120.0) -> None:
    """Fault injection: SIGKILL the next mace_run_train child of this process, as an
    out-of-memory killer or a lost node would."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc / "cmdline").read_bytes()
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == os.getpid() and b"mlipilot.training.mace_entry" in cmdline:
                os.kill(int(proc.name), signal.SIGKILL)
                return
        time.sleep(0.2)


def write_campaign(tmp: Path, data_dir: Path, **budget: object) -> Path:
    # The default campaign's training budget: at fewer epochs or frames an untrained
    # model can beat a trained one on energy, and the decisions below stop meaning much.
    return write_tiny_campaign(
        tmp,
        name="tiny",
        data_path=data_dir,
        n_train=48,
        spec=tiny_spec(md_seeds=(0,)),
        **{"epochs": 10, **budget},
    )


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("campaign")
    path = write_campaign(tmp, tmp / "data", iterations=4)
    campaign, _ = load_campaign(path)
    agent = ScriptedAgent(
        [
            # 1: a timid lr is the untuned baseline's main problem: must lower the violation.
            Proposal(hypothesis="raise lr", patch={"lr": 0.01}),
            # 2: a learning rate so small that nothing is learned in 10 epochs: must revert.
            Proposal(hypothesis="tiny lr", patch={"lr": 1e-5}),
            # 3: its trainer is killed mid-run (fault injection): a failed candidate.
            Proposal(hypothesis="more channels", patch={"num_channels": 16}),
            # 4: the same training as 2 (stage-two knobs are inert while stage two is off):
            # answered from the ledger, not retrained.
            Proposal(hypothesis="tiny lr again", patch={"lr": 1e-5, "stage_two_start": 0.5}),
        ],
        kill_trainer_at=3,
    )
    outcome = run_campaign(campaign, path, tmp / "runs", agent=agent)
    return campaign, outcome, agent


def test_decisions_follow_the_rule_on_real_models(scripted_run) -> None:
    _, outcome, _ = scripted_run
    verdicts = [r.verdict for r in outcome.rows]
    assert verdicts[0] == "BASELINE"
    base, fix = outcome.rows[0], outcome.rows[1]
    assert base.feasible is False, "the untuned baseline must be infeasible"
    assert verdicts[1] == "ACCEPT"
    assert fix.feasible or fix.violation < base.violation
    assert verdicts[2] == "REVERT", outcome.rows[2].reason
    assert verdicts[3] == "REVERT"
    assert "candidate failed" in outcome.rows[3].reason
    assert "killed by SIGKILL (out of memory?" in outcome.rows[3].reason
    assert verdicts[4] == "REVERT"
    assert outcome.rows[4].reason.startswith("same training as it002, not retrained")
    assert outcome.rows[4].metrics == outcome.rows[2].metrics
    assert outcome.best_iteration == 1


def test_ledger_records_every_step(scripted_run) -> None:
    campaign, outcome, _ = scripted_run
    dataset = open_dataset(campaign.data.path)
    with Ledger(outcome.layout.ledger) as ledger:
        events = ledger.events()
        kinds = [e.event for e in events]
        assert kinds[0] == "campaign_started" and kinds[-1] == "campaign_finished"
        assert kinds.count("proposal") == 5
        assert kinds.count("iteration_started") == 5  # the baseline and four proposals
        train_progress = [e for e in events if e.event == "progress" and e.candidate == "it000"]
        epochs = [e.detail["done"] for e in train_progress if e.detail["stage"] == "train"]
        assert epochs == list(range(1, campaign.budget.epochs + 1))
        assert kinds.count("training") == 4  # the duplicate was not trained again
        assert kinds.count("decision") == 5
        duplicate = ledger.events("proposal")[4]
        # A proposal records the incumbent it was made from: it001, the one accepted.
        assert duplicate.status == "duplicate"
        assert duplicate.detail == {"duplicate_of": "it002", "incumbent": "it001"}
        assert kinds.count("evaluation") == 3  # the killed candidate has no model to score
        start = events[0]
        assert start.train_hash == dataset.hash("train")
        assert start.test_hash == dataset.hash("test")
        trainings = ledger.events("training")
        assert [t.status for t in trainings] == ["ok", "ok", "ok", "failed"]
        assert all(t.duration_s and t.duration_s > 0 for t in trainings)
        assert len(trainings[0].detail["curve"]) == campaign.budget.epochs + 1  # + initial eval

        # Every recorded decision is what the rule gives on the recorded results.
        results = [
            ScoreResult.model_validate_json(
                (outcome.layout.candidate(i) / "result.json").read_text()
            )
            for i in range(3)
        ]
        decisions = ledger.events("decision")
        assert decide(results[1], results[0]).verdict == decisions[1].decision
        incumbent = results[1] if decisions[1].decision == "ACCEPT" else results[0]
        assert decide(results[2], incumbent).verdict == decisions[2].decision
        for d in decisions[:3]:
            assert d.spec_hash and d.test_hash == dataset.hash("test")
            assert d.metrics and "force_mae_meV_per_A" in d.metrics
        assert decisions[1].hypothesis == "raise lr"
        assert decisions[1].patch == {"lr": 0.01}

    with sqlite3.connect(outcome.layout.ledger) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE events SET decision = 'ACCEPT'")

    tsv = outcome.layout.results_tsv.read_text().splitlines()
    assert len(tsv) == 1 + 5


def test_results_folder_layout(scripted_run) -> None:
    campaign, outcome, agent = scripted_run
    root = outcome.layout.root
    for name in ("campaign.yaml", "scorecard.yaml", "ledger.sqlite", "summary.json", "best.model"):
        assert (root / name).is_file(), name
    accepted = outcome.layout.candidate(1)
    # best.model is a MACE file for users, written from the accepted candidate's package.
    best = torch.load(root / "best.model", map_location="cpu", weights_only=False)
    package = read_package(accepted / PACKAGE_NAME)
    assert type(best).__name__ == "ScaleShiftMACE"
    assert best.state_dict().keys() == package.state_dict().keys()
    assert all(torch.equal(v, package.state_dict()[k]) for k, v in best.state_dict().items())
    dataset = open_dataset(campaign.data.path)
    assert file_sha256(outcome.layout.train_split) == dataset.hash("train")
    for it in range(3):
        cdir = outcome.layout.candidate(it)
        # The trainer is given the training split (its copy in the run folder, the only data
        # Ray pods see on a cluster) and nothing else of the data set.
        command = (cdir / "train.log").read_text().splitlines()[0]
        assert str(outcome.layout.train_split) in command
        assert str(dataset.path("test")) not in command and "test" not in Path(command).name
        assert (cdir / "recipe.yaml").is_file() and (cdir / "result.json").is_file()
        assert list((cdir / "md").glob("replica-*.csv"))
    # The agent saw the verdicts of earlier iterations and never a path or the test data.
    last = agent.states[-1]
    assert [h.verdict for h in last.history] == ["BASELINE", "ACCEPT", "REVERT", "FAILED"]
    seen = last.model_dump_json()
    assert str(root) not in seen and str(campaign.data.path) not in seen
    assert "REF_energy" not in seen


def test_cli_runs_a_campaign_and_prints_the_table(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, tmp_path / "data", iterations=1, epochs=3)
    proc = subprocess.run(
        [sys.executable, "-m", "mlipilot.cli", "run", str(path), "--out", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "agent rule-based" in out
    assert "iterations" in out and "BASELINE" in out
    assert "best model:" in out and "ledger:" in out
    ledger_line = next(line for line in out.splitlines() if line.startswith("ledger:"))
    assert Path(ledger_line.split(":", 1)[1].strip()).is_file()


def test_cli_reports_a_bad_campaign_file_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ndata: {path: d}\nscorecard: s.yaml\nbaseline: {r_max: 99}\nbudget: {epochs: 2}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mlipilot.cli", "run", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "bad.yaml" in proc.stderr and "r_max" in proc.stderr and "7.0" in proc.stderr


def test_a_baseline_over_its_time_budget_stops_the_campaign_with_its_cause(
    tmp_path: Path,
) -> None:
    # mace_run_train alone takes longer than 2 s to import: the guard must kill it.
    path = write_campaign(tmp_path, tmp_path / "data", max_train_seconds=2)
    campaign, _ = load_campaign(path)
    with pytest.raises(MlipilotError, match=r"baseline could not be trained.*wall-clock"):
        run_campaign(campaign, path, tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").iterdir()
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        (training,) = ledger.events("training")
        assert training.status == "timeout"
        assert ledger.events("decision")[0].decision == "BASELINE"
        (end,) = ledger.events("campaign_finished")
        assert end.status == "failed" and "wall-clock" in (end.reason or "")
