"""Several candidates per iteration on a real local Ray instance: trainer actors, MD tasks.

Real MACE training on Ray actors and MD replicas as Ray tasks, in the shared test-session Ray
instance (loopback-only network namespace, see conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import ray
import torch
import yaml
from factories import write_tiny_campaign

from mlipilot.campaign.loop import run_campaign, run_in_layout
from mlipilot.campaign.run_folder import create_run
from mlipilot.config import load_campaign
from mlipilot.ledger import LedgerEvent, read_events
from mlipilot.stopping import CampaignStopped, StopRequest

pytestmark = pytest.mark.slow


def _campaign_file(folder: Path, name: str, **budget: object) -> Path:
    path = write_tiny_campaign(folder, name=name, **budget)
    data = yaml.safe_load(path.read_text())
    data["compute"] = {"torch_threads": 1, "ray_address": "local"}
    path.write_text(yaml.safe_dump(data))
    return path


def _when(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


@pytest.fixture(scope="module")
def parallel_run(ray_session, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("parallel")
    path = _campaign_file(folder, "par", iterations=2, epochs=3, candidates_per_iteration=2)
    campaign, _ = load_campaign(path)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the campaign asks for 1 (compute.torch_threads)
    try:
        outcome = run_campaign(campaign, path, folder / "runs")
        threads_after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return outcome, read_events(outcome.layout.ledger), threads_after


def _of(events: list[LedgerEvent], kind: str, iteration: int) -> list[LedgerEvent]:
    return [e for e in events if e.event == kind and e.iteration == iteration]


def test_two_candidates_train_concurrently_on_their_own_actors(parallel_run) -> None:
    _, events, _ = parallel_run
    for iteration in (1, 2):
        a, b = _of(events, "training", iteration)
        assert {a.candidate, b.candidate} == {f"it{iteration:03d}-1", f"it{iteration:03d}-2"}
        assert a.status == b.status == "ok"
        # Overlapping intervals: each started before the other finished.
        assert max(_when(a.started_at), _when(b.started_at)) < min(
            _when(a.finished_at), _when(b.finished_at)
        )
        pids = {a.detail["pid"], b.detail["pid"]}
        assert len(pids) == 2 and os.getpid() not in pids  # two actors, not this process
        for t in (a, b):
            assert t.detail["device"] == "cpu" and not t.detail["retried"]
            assert 0 <= t.detail["dispatch_overhead_s"] < 60


def test_every_candidate_is_decided_and_only_the_best_can_be_accepted(parallel_run) -> None:
    outcome, events, _ = parallel_run
    for iteration in (1, 2):
        decisions = _of(events, "decision", iteration)
        assert len(decisions) == 2
        accepted = [d for d in decisions if d.decision == "ACCEPT"]
        assert len(accepted) <= 1
        scored = [d for d in decisions if d.metrics]
        # The documented order: feasible first, then composite (feasible) or violation, then
        # proposal order (it001-1 before it001-2).
        best = min(
            scored,
            key=lambda d: (not d.feasible, d.composite if d.feasible else d.violation, d.candidate),
        ).candidate
        if accepted:
            assert accepted[0].candidate == best
        assert outcome.rows[-1].candidate == "it002-2"
        for d in decisions:
            if d.candidate != best and d.decision == "REVERT" and "ranked first" in d.reason:
                assert best in d.reason
    # MD replicas ran as Ray tasks and wrote their traces into each candidate's folder.
    reasons = {e.candidate: e.reason for e in events if e.event == "decision"}
    for name in ("it001-1", "it001-2", "it002-1", "it002-2"):
        traces = list((outcome.layout.candidate_dir(name) / "md").glob("*.csv"))
        assert len(traces) == 2, f"{name}: {reasons[name]}"


def test_the_campaign_puts_torch_threads_back(parallel_run) -> None:
    """torch's thread count is process-wide: a campaign run as a library call must not leave
    its ``compute.torch_threads`` behind (a later throughput timing ran on one thread)."""
    assert parallel_run[2] == 2


def _child_of(work_dir: Path) -> tuple[int, int] | None:
    """(pid, parent pid) of the mace_run_train process training in ``work_dir``."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(work_dir) not in cmdline.read_bytes().decode(errors="replace"):
                continue
            status = (cmdline.parent / "status").read_text()
        except OSError:
            continue
        ppid = int(next(li for li in status.splitlines() if li.startswith("PPid:")).split()[1])
        return int(cmdline.parent.name), ppid
    return None


def _wait_for_epoch(runs: Path, candidate: str, timeout_s: float = 240) -> Path:
    """The candidate's folder, once its training has logged an epoch."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for log in runs.glob(f"*/candidates/{candidate}/train.log"):
            if "Epoch 0" in log.read_text(errors="replace"):
                return log.parent
        time.sleep(0.3)
    raise AssertionError(f"{candidate} never started training")


def _freeze_when_training(runs: Path, candidates: set[str]) -> dict[str, tuple[Path, int, int]]:
    """Each candidate's folder, training child and its parent (the actor's worker), its child
    SIGSTOPped as soon as it has logged an epoch: neither can finish its training while the test
    waits for the other (on a loaded machine one started its eight epochs after the other had
    run through them, and the kill found no actor)."""
    frozen: dict[str, tuple[Path, int, int]] = {}
    deadline = time.monotonic() + 240
    while len(frozen) < len(candidates):
        assert time.monotonic() < deadline, f"never both training: {sorted(frozen)}"
        for name in candidates - set(frozen):
            for log in runs.glob(f"*/candidates/{name}/train.log"):
                child = _child_of(log.parent)
                if child and "Epoch 0" in log.read_text(errors="replace"):
                    os.kill(child[0], signal.SIGSTOP)
                    frozen[name] = (log.parent, *child)
        time.sleep(0.3)
    return frozen


def test_a_killed_trainer_fails_its_candidate_and_a_lost_worker_is_retried(
    ray_session, tmp_path: Path
) -> None:
    path = _campaign_file(tmp_path, "kill", iterations=1, epochs=8, candidates_per_iteration=2)
    campaign, _ = load_campaign(path)
    runs = tmp_path / "runs"
    killed: dict[str, str] = {}

    def killer() -> None:
        frozen = _freeze_when_training(runs, {"it001-1", "it001-2"})
        _, _, worker = frozen["it001-1"]
        os.kill(worker, signal.SIGKILL)  # the actor's worker process dies: transient
        killed["it001-1"] = f"worker {worker}"
        doomed = frozen["it001-2"][0]
        name = f"trainer-{doomed.parent.parent.name}-it001-2"
        ray.kill(ray.get_actor(name, namespace="mlipilot"), no_restart=True)  # for good
        killed["it001-2"] = name
        for _, child, _ in frozen.values():  # PDEATHSIG has killed both; none stays stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGCONT)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    outcome = run_campaign(campaign, path, runs)
    thread.join(timeout=5)
    assert set(killed) == {"it001-1", "it001-2"}, "the killer did not get to both trainers"

    events = read_events(outcome.layout.ledger)
    trainings = {t.candidate: t for t in _of(events, "training", 1)}
    assert trainings["it001-2"].status == "failed"
    assert "trainer actor died" in trainings["it001-2"].reason
    assert trainings["it001-1"].status == "ok" and trainings["it001-1"].detail["retried"]
    decisions = {d.candidate: d for d in _of(events, "decision", 1)}
    assert decisions["it001-2"].decision == "REVERT"
    assert "trainer actor died" in decisions["it001-2"].reason
    assert decisions["it001-1"].metrics  # the retried candidate was scored
    assert events[-1].event == "campaign_finished" and events[-1].status == "finished"
    assert _child_of(outcome.layout.root) is None  # no training child outlived its actor


def test_a_cancelled_campaign_cancels_its_ray_work(ray_session, tmp_path: Path) -> None:
    path = _campaign_file(tmp_path, "stop", iterations=3, epochs=10_000, candidates_per_iteration=2)
    campaign, _ = load_campaign(path)
    layout = create_run(campaign, path.read_text(), tmp_path / "runs")
    stop = StopRequest()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            run_in_layout(campaign, layout, stop=stop)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _wait_for_epoch(tmp_path / "runs", "it000")
    stop.request("cancelled", "cancelled by the test")
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert raised and isinstance(raised[0], CampaignStopped)
    events = read_events(layout.ledger)
    assert events[-1].event == "campaign_finished" and events[-1].status == "cancelled"
    prefix = f"trainer-{layout.root.name}-"
    deadline = time.monotonic() + 20
    while any(a["name"].startswith(prefix) for a in ray.util.list_named_actors(True)):
        assert time.monotonic() < deadline, "the campaign's trainer actors outlived it"
        time.sleep(0.5)
    assert _child_of(layout.root) is None
