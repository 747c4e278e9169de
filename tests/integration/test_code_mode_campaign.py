"""Code mode end to end: edits of the training program trained for real in the sandbox, scored,
committed or kept on a branch, and refused or failed with their cause; the campaign goes on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from factories import tiny_spec, write_tiny_campaign

from mlipilot.agents.base import CampaignState, Proposal
from mlipilot.campaign.loop import run_campaign
from mlipilot.code_mode.diffs import unified_diff
from mlipilot.code_mode.edits import CODE_EDITS
from mlipilot.code_mode.program_files import PROGRAM, TEMPLATE
from mlipilot.config import load_campaign
from mlipilot.ledger import Ledger

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
]

BASELINE_PROGRAM = (TEMPLATE / PROGRAM).read_text()
FORCE_NORM = next(e for e in CODE_EDITS if e.name == "force-norm-loss")
FIX_RECIPE = {"lr": 0.01}  # the untuned baseline's main problem (as in test_campaign.py)


def _edited(before: str, old: str, new: str) -> str:
    assert before.count(old) == 1, old
    return unified_diff(PROGRAM, before, before.replace(old, new))


class ScriptedAgent:
    """Proposals in order, one per call (a refused one is followed by the next)."""

    name = "scripted"

    def __init__(self, proposals: list[Proposal]) -> None:
        self.proposals = list(proposals)
        self.states: list[CampaignState] = []

    def propose(self, state: CampaignState) -> Proposal:
        self.states.append(state)
        return self.proposals.pop(0)


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def code_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("code")
    # The default campaign's data and epochs: with fewer an untrained model can win on energy.
    spec = tiny_spec(md_seeds=(0,))
    path = write_tiny_campaign(
        tmp, name="code", data_path=tmp / "data", n_train=48, spec=spec, iterations=4, epochs=10
    )
    text = path.read_text().replace("agent:", "mode: code\nagent:")
    path.write_text(text)
    campaign, _ = load_campaign(path)
    test_split = (tmp / "data" / "test.xyz").resolve()
    after_loss_term = FORCE_NORM.edit(BASELINE_PROGRAM)
    agent = ScriptedAgent(
        [
            # 1: a loss term, with the normalization and lr the untuned baseline lacks: accepted.
            Proposal(
                hypothesis="add a force-norm term to the loss",
                patch=FIX_RECIPE,
                diff=unified_diff(PROGRAM, BASELINE_PROGRAM, after_loss_term),
            ),
            # 2: an lr a million times smaller, in the program: worse, reverted.
            Proposal(
                hypothesis="crawl",
                diff=_edited(after_loss_term, 'lr=job["lr"]', 'lr=job["lr"] * 1e-6'),
            ),
            # 3a: a diff against the baseline's loss, which the accepted edit changed: stale.
            Proposal(
                hypothesis="stale",
                diff=_edited(
                    BASELINE_PROGRAM,
                    'return job["energy_weight"] * energy + job["forces_weight"] * forces',
                    'return 2 * job["energy_weight"] * energy + job["forces_weight"] * forces',
                ),
            ),
            # 3b: the retry: a program that raises: a failed candidate, recorded with its cause.
            Proposal(
                hypothesis="raise",
                diff=_edited(
                    after_loss_term,
                    '    torch.set_default_dtype(getattr(torch, job["default_dtype"]))\n',
                    '    raise RuntimeError("edited program fails on purpose")\n',
                ),
            ),
            # 4: a program that reaches for the test split and the network, then trains.
            Proposal(
                hypothesis="peek",
                diff=_edited(
                    after_loss_term,
                    '    torch.set_default_dtype(getattr(torch, job["default_dtype"]))\n',
                    "    import socket\n"
                    "    try:\n"
                    f"        print('LEAK', len(open({str(test_split)!r}).read()))\n"
                    "    except OSError as exc:\n"
                    "        print('test split blocked:', exc)\n"
                    "    try:\n"
                    "        socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
                    "        print('LEAK network')\n"
                    "    except OSError as exc:\n"
                    "        print('network blocked:', exc)\n"
                    '    torch.set_default_dtype(getattr(torch, job["default_dtype"]))\n',
                ),
            ),
        ]
    )
    outcome = run_campaign(campaign, path, tmp / "runs", agent=agent)
    return campaign, outcome, agent, test_split


def test_an_accepted_edit_is_a_commit_with_its_hypothesis_and_ledger_row(code_run) -> None:
    _, outcome, _, _ = code_run
    repo = outcome.layout.code
    with Ledger(outcome.layout.ledger) as ledger:
        decisions = {d.candidate: d for d in ledger.events("decision")}
        proposals = {p.candidate: p for p in ledger.events("proposal")}
        start = ledger.events("campaign_started")[0]
    assert decisions["it001"].decision == "ACCEPT", decisions["it001"].reason
    assert proposals["it001"].detail["base_commit"] == start.detail["program_commit"]
    assert "+++ b/training/program.py" in proposals["it001"].detail["diff"]
    message = _git(repo, "log", "-1", "--format=%B", "main")
    assert message.startswith("add a force-norm term to the loss")
    assert f"Ledger-Row: {decisions['it001'].id}" in message
    assert "Candidate: it001" in message
    assert (outcome.layout.code / PROGRAM).read_text() == FORCE_NORM.edit(BASELINE_PROGRAM)
    # It was trained as edited: the candidate's own copy carries the term.
    trained_program = outcome.layout.candidate(1) / "program" / PROGRAM
    assert trained_program.read_text() == FORCE_NORM.edit(BASELINE_PROGRAM)
    assert "epoch 9 train_loss" in (outcome.layout.candidate(1) / "train.log").read_text()


def test_a_reverted_edit_leaves_the_program_and_is_kept_on_a_branch(code_run) -> None:
    _, outcome, _, _ = code_run
    repo = outcome.layout.code
    with Ledger(outcome.layout.ledger) as ledger:
        decisions = {d.candidate: d for d in ledger.events("decision")}
    assert decisions["it002"].decision == "REVERT", decisions["it002"].reason
    assert len(_git(repo, "rev-list", "main").split()) == 2  # baseline + the accepted edit
    assert 'job["lr"] * 1e-6' not in (repo / PROGRAM).read_text()
    branch = _git(repo, "show", "reverted/it002:training/program.py")
    assert 'job["lr"] * 1e-6' in branch
    assert "Verdict: REVERT" in _git(repo, "log", "-1", "--format=%B", "reverted/it002")
    log = _git(repo, "log", "--all", "--format=%s")
    assert "crawl" in log and "add a force-norm term to the loss" in log


def test_a_bad_diff_is_refused_and_a_raising_program_fails_with_its_cause(code_run) -> None:
    _, outcome, agent, _ = code_run
    with Ledger(outcome.layout.ledger) as ledger:
        refusals = [f for f in ledger.events("agent_failure") if f.iteration == 3]
        decision = {d.candidate: d for d in ledger.events("decision")}["it003"]
    assert [f.status for f in refusals] == ["invalid_patch"]
    assert "does not apply" in refusals[0].reason or "patch failed" in refusals[0].reason
    # The agent was told why before its retry.
    assert agent.states[3].last_error == refusals[0].reason
    assert decision.metrics is None  # never scored
    assert "edited program fails on purpose" in decision.reason
    assert "RuntimeError" in (outcome.layout.candidate(3) / "train.log").read_text()
    assert _git(outcome.layout.code, "show", "reverted/it003:training/program.py")


def test_an_edit_reaching_for_the_test_split_or_network_is_stopped(code_run) -> None:
    _, outcome, _, test_split = code_run
    log = (outcome.layout.candidate(4) / "train.log").read_text()
    assert "test split blocked:" in log and "network blocked:" in log
    assert "LEAK" not in log
    assert test_split.is_file()  # it exists on the host: the sandbox hid it
    with Ledger(outcome.layout.ledger) as ledger:
        decision = {d.candidate: d for d in ledger.events("decision")}["it004"]
    assert decision.metrics is not None  # it trained and was scored all the same
    assert outcome.rows[-1].candidate == "it004"


def test_a_code_mode_campaign_killed_before_its_commit_resumes_and_commits_once(
    tmp_path: Path,
) -> None:
    """Killed (SIGKILL) right after the first decision row and before the program's commit:
    the resumed campaign replays that decision, makes the commit it lacks, and goes on."""
    import os
    import sys

    from mlipilot.ledger import read_events

    spec = tiny_spec(md_seeds=(0,))
    spec["md"] |= {"nvt_steps": 10, "nve_steps": 5}
    path = write_tiny_campaign(
        tmp_path, name="code-resume", data_path=tmp_path / "data", spec=spec, iterations=2,
        epochs=2,
    )  # fmt: skip
    # A recipe the recipe rules have nothing to say about: the rule-based researcher's first
    # proposal is an edit of the program.
    campaign = yaml.safe_load(path.read_text())
    campaign["mode"] = "code"
    campaign["baseline"] |= {
        **FIX_RECIPE,
        "forces_weight": 100.0,
        "e0s": "average",
        "scaling": "rms_forces_scaling",
        "r_max": 5.0,
    }
    path.write_text(yaml.safe_dump(campaign))
    cli = [sys.executable, "-m", "mlipilot.cli", "run"]
    env = {**os.environ, "MLIPILOT_KILL_AT": "decision:1"}
    killed = subprocess.run(
        [*cli, str(path), "--out", str(tmp_path / "runs")], env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = next((tmp_path / "runs").iterdir())
    events = read_events(run_dir / "ledger.sqlite")
    first = next(e for e in events if e.event == "proposal" and e.candidate == "it001")
    assert first.detail and first.detail["diff"], "the first proposal should edit the program"
    decision = next(e for e in events if e.event == "decision" and e.candidate == "it001")
    repo = run_dir / "code"
    assert "Candidate: it001" not in _git(repo, "log", "--all", "--format=%B")  # killed before
    env.pop("MLIPILOT_KILL_AT")
    resumed = subprocess.run(
        [*cli, "--resume", str(run_dir)], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    messages = _git(repo, "log", "--all", "--format=%B%x00").split("\0")
    kept = [m for m in messages if "Candidate: it001" in m]
    assert len(kept) == 1
    assert f"Ledger-Row: {decision.id}" in kept[0]
    assert f"Verdict: {decision.decision}" in kept[0]
    final = read_events(run_dir / "ledger.sqlite")
    assert final[-1].event == "campaign_finished"
    assert len([e for e in final if e.event == "decision" and e.candidate == "it001"]) == 1


def test_code_mode_on_ray_trains_each_candidates_program_on_an_actor(
    ray_session, tmp_path: Path
) -> None:
    """Two candidates side by side on Ray actors, each running its own program in the sandbox
    on the actor's node: the better is committed, the other kept on a branch off the same
    commit, though main moved on in the same iteration."""
    spec = tiny_spec(md_seeds=(0,))
    spec["md"] |= {"nvt_steps": 10, "nve_steps": 5}
    path = write_tiny_campaign(
        tmp_path, name="code-ray", data_path=tmp_path / "data", n_train=48, spec=spec
    )
    campaign_data = yaml.safe_load(path.read_text())
    campaign_data |= {"mode": "code", "compute": {"torch_threads": 1, "ray_address": "local"}}
    campaign_data["budget"] |= {"iterations": 1, "epochs": 10, "candidates_per_iteration": 2}
    path.write_text(yaml.safe_dump(campaign_data))
    campaign, _ = load_campaign(path)
    worse = _edited(BASELINE_PROGRAM, 'lr=job["lr"]', 'lr=job["lr"] * 1e-6')
    better = unified_diff(PROGRAM, BASELINE_PROGRAM, FORCE_NORM.edit(BASELINE_PROGRAM))
    agent = ScriptedAgent(
        [
            Proposal(hypothesis="crawl", diff=worse),
            Proposal(hypothesis="loss term and lr", patch=FIX_RECIPE, diff=better),
        ]
    )
    outcome = run_campaign(campaign, path, tmp_path / "runs", agent=agent)
    with Ledger(outcome.layout.ledger) as ledger:
        trainings = {t.candidate: t for t in ledger.events("training")}
        decisions = {d.candidate: d for d in ledger.events("decision")}
        proposals = {p.candidate: p for p in ledger.events("proposal")}
    # Trained on Ray actors (each records its node), every one by its own program.
    for name in ("it001-1", "it001-2"):
        assert trainings[name].status == "ok", trainings[name].reason
        assert trainings[name].detail.get("node"), trainings[name].detail
    program_1 = outcome.layout.candidate_dir("it001-1") / "program" / PROGRAM
    assert 'job["lr"] * 1e-6' in program_1.read_text()
    verdicts = {n: decisions[n].decision for n in ("it001-1", "it001-2")}
    assert sorted(verdicts.values()) == ["ACCEPT", "REVERT"], verdicts
    accepted = next(n for n, v in verdicts.items() if v == "ACCEPT")
    reverted = next(n for n, v in verdicts.items() if v == "REVERT")
    repo = outcome.layout.code
    assert f"Candidate: {accepted}" in _git(repo, "log", "-1", "--format=%B", "main")
    base = proposals[reverted].detail["base_commit"]
    assert proposals[accepted].detail["base_commit"] == base
    assert _git(repo, "rev-parse", f"reverted/{reverted}^").strip() == base


def test_noise_repeats_in_code_mode_train_each_sides_own_program(tmp_path: Path) -> None:
    """With ``noise: {seeds: 2}`` a would-be accept is trained again with seed 2, and so is the
    incumbent: the candidate's repeat runs its diff on the commit it was tried on, the
    incumbent's runs main's program, and the verdict is the one over both seeds."""
    path = write_tiny_campaign(
        tmp_path, name="code-noise", data_path=tmp_path / "data", n_train=48,
        spec=tiny_spec(md_seeds=(0,)), iterations=1, epochs=10,
    )  # fmt: skip
    data = yaml.safe_load(path.read_text())
    data |= {"mode": "code", "noise": {"seeds": 2, "k": 1.0}}
    path.write_text(yaml.safe_dump(data))
    campaign, _ = load_campaign(path)
    # code_run's first proposal, accepted there on one seed: a would-be accept here.
    diff = unified_diff(PROGRAM, BASELINE_PROGRAM, FORCE_NORM.edit(BASELINE_PROGRAM))
    agent = ScriptedAgent([Proposal(hypothesis="force-norm term", patch=FIX_RECIPE, diff=diff)])
    outcome = run_campaign(campaign, path, tmp_path / "runs", agent=agent)
    with Ledger(outcome.layout.ledger) as ledger:
        repeats = {r.candidate: r for r in ledger.events("repeat")}
        [proposal] = [p for p in ledger.events("proposal") if p.candidate == "it001"]
        [decision] = [d for d in ledger.events("decision") if d.candidate == "it001"]
    assert set(repeats) == {"it001.seed2", "it000.seed2"}
    marker = f"# code-edit: {FORCE_NORM.name}"
    repeated = outcome.layout.candidate_dir("it001.seed2") / "program" / PROGRAM
    incumbent = outcome.layout.candidate_dir("it000.seed2") / "program" / PROGRAM
    assert repeated.read_text() == FORCE_NORM.edit(BASELINE_PROGRAM)
    assert marker in repeated.read_text()
    assert incumbent.read_text() == BASELINE_PROGRAM
    noise = (decision.detail or {}).get("noise")
    assert noise, decision.detail
    assert noise["candidate"]["runs"] == ["it001", "it001.seed2"]
    assert noise["incumbent"]["runs"] == ["it000", "it000.seed2"]
    # Whatever the verdict over seeds, main carries the edit exactly when it was accepted.
    main_program = _git(outcome.layout.code, "show", f"main:{PROGRAM}")
    assert (marker in main_program) == (decision.decision == "ACCEPT"), decision.reason
    assert (
        proposal.detail["base_commit"]
        == _git(outcome.layout.code, "rev-list", "--max-parents=0", "main").strip()
    )


def test_async_code_mode_accepts_the_program_each_candidate_trained(tmp_path: Path) -> None:
    """Asynchronous, two in flight: both edits are made from the baseline's program, and the
    second to finish may be accepted after the first moved main on. Each accepted commit on
    main holds exactly the program its candidate trained (its base with its diff), never a
    merge of edits that no candidate trained."""
    path = write_tiny_campaign(
        tmp_path, name="code-async", data_path=tmp_path / "data", n_train=48,
        spec=tiny_spec(md_seeds=(0,)), iterations=2, epochs=10,
        scheduler="async", max_in_flight=2,
    )  # fmt: skip
    data = yaml.safe_load(path.read_text())
    data["mode"] = "code"
    path.write_text(yaml.safe_dump(data))
    campaign, _ = load_campaign(path)
    cosine = next(e for e in CODE_EDITS if e.name == "cosine-lr")
    agent = ScriptedAgent(
        [
            Proposal(
                hypothesis="force-norm term",
                patch=FIX_RECIPE,
                diff=unified_diff(PROGRAM, BASELINE_PROGRAM, FORCE_NORM.edit(BASELINE_PROGRAM)),
            ),
            Proposal(
                hypothesis="cosine schedule, fitted E0s",
                patch={**FIX_RECIPE, "e0s": "average"},
                diff=unified_diff(PROGRAM, BASELINE_PROGRAM, cosine.edit(BASELINE_PROGRAM)),
            ),
        ]
    )
    outcome = run_campaign(campaign, path, tmp_path / "runs", agent=agent)
    with Ledger(outcome.layout.ledger) as ledger:
        proposals = {p.candidate: p for p in ledger.events("proposal")}
        decisions = [d for d in ledger.events("decision") if d.iteration]
    root = _git(outcome.layout.code, "rev-list", "--max-parents=0", "main").strip()
    assert {proposals[n].detail["base_commit"] for n in ("it001", "it002")} == {root}
    accepted = [d.candidate for d in decisions if d.decision == "ACCEPT"]
    assert accepted, [(d.candidate, d.reason) for d in decisions]  # the lr fix wins over it000
    commits = _git(outcome.layout.code, "rev-list", "--reverse", f"{root}..main").split()
    assert len(commits) == len(accepted)  # one commit per accept, in the order decided
    for sha, name in zip(commits, accepted, strict=True):
        trailers = "--format=%(trailers:key=Candidate,valueonly)"
        assert _git(outcome.layout.code, "log", "-1", trailers, sha).strip() == name
        trained = outcome.layout.candidate_dir(name) / "program" / PROGRAM
        assert _git(outcome.layout.code, "show", f"{sha}:{PROGRAM}") == trained.read_text()
    main_program = _git(outcome.layout.code, "show", f"main:{PROGRAM}")
    last = outcome.layout.candidate_dir(accepted[-1]) / "program" / PROGRAM
    assert main_program == last.read_text()
