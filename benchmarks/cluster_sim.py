"""A simulated GPU cluster: synchronous against asynchronous campaigns at 8, 64 and 256 workers.

Real: the campaign loop with either scheduler, its candidate pool (a thread per candidate in
flight), the ledger (SQLite, every row), the recorder, the agent session, a real agent
(random search), every decision, and ``best.model`` written from a real model package on
each accept. Simulated, since there are no GPUs here: the trainers and the scorecard. Each
candidate's training and scoring sleep for a pair of durations drawn from 256 candidates of
real cu-emt-quick campaigns on this machine (``results/candidate_durations.json``: median
training 33 s, scoring 30 s; 28 time-outs at 300 s are the failures and stragglers), time
compressed by ``scale``. The ``llm`` agent profile adds a think time per proposal drawn from
the local LLM agent's measured calls (Qwen on these CPUs, median ~90 s), compressed alike.

Measured per run (over the window from the first candidate after the baseline to the end):
- utilization: simulated GPU-busy seconds / (workers x window), and the same up to the last
  candidate's start (steady: while the agent still proposes, the regime of a long campaign;
  the whole window adds the last candidates' drain, stragglers included);
- candidates per hour, in real (uncompressed) time;
- orchestration: the loop thread's own time (window - waiting for workers - the agent's
  time, its think time or, for random search, its own compute),
  per candidate in ms, and as a share of the wall time the same run would take uncompressed
  (the loop's work does not shrink with ``scale``, so the compressed run overstates it);
- ledger rows per candidate and per second (sustained, compressed);
- agent latency hidden: the share of think time during which some candidate was running.

``--asks N`` asks an asynchronous campaign's agent for up to N proposals at once
(``budget.asks_in_flight``), each in a thread of its own; the simulated agent answers them
side by side, as vLLM batches concurrent requests (its think time does not grow with N here).

    .venv/bin/python benchmarks/cluster_sim.py                 # 8, 64, 256 x sync, async
    .venv/bin/python benchmarks/cluster_sim.py --workers 8 --agent llm
    .venv/bin/python benchmarks/cluster_sim.py --workers 8 64 --agent llm --schedulers async \
        --asks 1 8 --waves 2
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mlipilot.agents.base import CampaignState, Proposal
from mlipilot.agents.random_search import RandomSearchAgent
from mlipilot.campaign import asynchronous, candidates
from mlipilot.campaign.loop import run_in_layout
from mlipilot.campaign.run_folder import create_run
from mlipilot.config import load_campaign
from mlipilot.ledger import read_events, utc_now
from mlipilot.model_files.package import write_package
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.spec import ScorecardSpec, load_spec
from mlipilot.stopping import StopRequest
from mlipilot.training.tasks import TrainedModel, TrainingTask
from mlipilot.training.trainer import TrainingOutcome

REPO = Path(__file__).resolve().parents[1]
DURATIONS = REPO / "benchmarks" / "results" / "candidate_durations.json"
WAVES = 12  # candidates per run: WAVES x workers, so the baseline and the last wave's drain
# weigh little. Compression per size: the loop's own time per candidate does not shrink, so a
# bigger cluster (more candidates finishing per second) gets a milder compression.
SCALE = {8: 0.01, 64: 0.05, 256: 0.2}


@dataclass
class Clock:
    """What the simulated parts did, in compressed seconds."""

    intervals: list[tuple[float, float]] = field(default_factory=list)  # GPU-busy, after it000
    first_start: float | None = None
    last_start: float | None = None  # the last candidate's training: the steady state ends
    waited_before_s: float = 0.0  # the loop's waiting before the window
    think_s: float = 0.0
    think_on_loop_s: float = 0.0  # of it, the loop thread's (asked one at a time)
    think_hidden_s: float = 0.0
    running: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def work(self, name: str, seconds: float, training: bool) -> None:
        start = time.monotonic()
        with self.lock:
            self.running += 1
            if name != "it000" and self.first_start is None:  # the window opens
                self.first_start = start
                self.waited_before_s = TimedQueue.waited_s
            if name != "it000" and training:
                self.last_start = start
        try:
            time.sleep(seconds)
        finally:
            with self.lock:
                self.running -= 1
                if name != "it000":
                    self.intervals.append((start, start + seconds))

    def busy(self, t0: float, t1: float) -> float:
        """GPU-busy seconds inside [t0, t1]."""
        return sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in self.intervals)


class Draws:
    """Each candidate's (training, scoring, status), drawn once from the measured ones."""

    def __init__(self, seed: int, scale: float) -> None:
        data = json.loads(DURATIONS.read_text())
        self.candidates = data["candidates"]
        self.agent_s = data["agent_call_s"]
        self.rng = random.Random(seed)
        self.scale = scale
        self._by_name: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def of(self, name: str) -> dict[str, Any]:
        with self._lock:
            if name not in self._by_name:
                self._by_name[name] = self.rng.choice(self.candidates)
            return self._by_name[name]

    def think(self) -> float:
        with self._lock:
            return self.rng.choice(self.agent_s) * self.scale


class SimTrainer:
    """A GPU worker: sleeps for the candidate's drawn training time, then hands back a real
    model package (a copy of one) or the drawn failure."""

    def __init__(self, draws: Draws, clock: Clock, package: Path) -> None:
        self.draws, self.clock, self.package = draws, clock, package

    def train(self, task: TrainingTask, progress: Any) -> TrainedModel:
        started = utc_now()
        draw = self.draws.of(task.name)
        self.clock.work(task.name, draw["train_s"] * self.draws.scale, training=True)
        task.work_dir.mkdir(parents=True, exist_ok=True)
        log = task.work_dir / "train.log"
        log.write_text("simulated\n")
        model = None
        if draw["status"] == "ok" or task.name == "it000":
            model = shutil.copyfile(self.package, task.work_dir / "model-package.pt")
        outcome = TrainingOutcome(
            status="ok" if model else draw["status"],
            cause=None if model else "simulated: over max_train_seconds",
            model_path=model,
            wall_s=draw["train_s"],
            log_path=log,
            command=["simulated"],
        )
        return TrainedModel(outcome, started, started, utc_now(), {"device": "sim-gpu"})

    def poll(self) -> list:
        return []

    def cancel(self, name: str) -> None:
        pass  # a simulated training runs its drawn time

    def cancel_all(self) -> None:
        pass

    def close(self) -> None:
        pass


class SimScorer:
    """The scorecard: sleeps for the drawn scoring time; metrics drawn around its thresholds,
    so that some candidates improve and fewer do as the incumbent gets better."""

    def __init__(self, spec: ScorecardSpec, draws: Draws, clock: Clock) -> None:
        self.spec, self.spec_hash, self.test_hash = spec, "sim-spec", "sim-test"
        self.draws, self.clock = draws, clock
        self.rng = np.random.default_rng(0)
        self._lock = threading.Lock()

    def evaluate(
        self, model_path: Path, *, baseline_model_path: Path, out_dir: Path, progress=None
    ) -> ScoreResult:
        name = out_dir.name
        self.clock.work(name, self.draws.of(name)["score_s"] * self.draws.scale, training=False)
        with self._lock:
            factors = self.rng.lognormal(0.0, 0.35, len(self.spec.constraints))
        metrics = {}
        for c, f in zip(self.spec.constraints, factors, strict=True):
            metrics[c.metric] = c.threshold * (f if c.max is not None else 1.0 / f)
        return ScoreResult.judged(
            self.spec, metrics, spec_hash=self.spec_hash, test_hash=self.test_hash
        )


class ThinkingAgent:
    """Random search, with the LLM agent's measured think time (or none) before each answer."""

    concurrent = True  # asked from several threads at once with --asks (agents.base)

    def __init__(self, draws: Draws, clock: Clock, think: bool) -> None:
        self.inner = RandomSearchAgent(seed=0)
        self.name = "sim-" + ("llm" if think else "fast")
        self.draws, self.clock, self.think = draws, clock, think

    def propose(self, state: CampaignState) -> Proposal:
        t0 = time.monotonic()
        if self.think:
            time.sleep(self.draws.think())
        try:
            return self.inner.propose(state)
        finally:  # the agent's time, simulated or its own compute: not the loop's
            seconds = time.monotonic() - t0
            with self.clock.lock:
                self.clock.think_s += seconds
                if threading.current_thread() is threading.main_thread():
                    self.clock.think_on_loop_s += seconds
                if self.clock.running:
                    self.clock.think_hidden_s += seconds


_wait = asynchronous.wait


def _timed_wait(*args: Any, **kwargs: Any) -> Any:
    t0 = time.monotonic()
    try:
        return _wait(*args, **kwargs)
    finally:
        TimedQueue.waited_s += time.monotonic() - t0


class TimedQueue(queue.Queue):
    """The pool's queue, timing how long the loop thread waits on it for its workers."""

    waited_s = 0.0

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        t0 = time.monotonic()
        try:
            return super().get(block, timeout)
        finally:
            TimedQueue.waited_s += time.monotonic() - t0


def model_package(folder: Path) -> Path:
    """A small real MACE model (Cu), as a package: what every simulated training hands back."""
    from e3nn import o3
    from mace import modules

    torch.manual_seed(0)
    model = modules.ScaleShiftMACE(
        r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=1,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=1, num_elements=1, hidden_irreps=o3.Irreps("8x0e"),
        MLP_irreps=o3.Irreps("8x0e"), atomic_energies=np.array([-3.0]), avg_num_neighbors=8.0,
        atomic_numbers=[29], correlation=2, gate=torch.nn.functional.silu,
        atomic_inter_scale=1.0, atomic_inter_shift=0.0,
    )  # fmt: skip
    return write_package(model, folder / "template-package.pt")


def campaign_file(folder: Path, scheduler: str, workers: int, asks: int, waves: int) -> Path:
    budget: dict[str, Any] = {
        "iterations": waves * workers,
        "epochs": 1,
        "max_train_seconds": 300,
        "agent_retries": 2,
    }
    if scheduler == "async":
        budget |= {"scheduler": "async", "max_in_flight": workers, "asks_in_flight": asks}
    else:
        budget |= {"candidates_per_iteration": workers}
        budget["iterations"] = waves
    campaign = {
        "name": f"sim-{scheduler}-{workers}",
        # Enough frames that every batch size the agent draws fits; made once, shared.
        "data": {
            "kind": "cu-emt",
            "path": str(folder.parent / "data"),
            "n_train": 160,
            "n_test": 4,
        },
        "scorecard": str(REPO / "scorecard" / "cu-emt.yaml"),
        "baseline": {"r_max": 3.0, "num_channels": 8, "batch_size": 4},
        "agent": {"kind": "random"},
        "budget": budget,
    }
    path = folder / f"{campaign['name']}.yaml"
    path.write_text(yaml.safe_dump(campaign))
    return path


def simulate(
    folder: Path,
    package: Path,
    scheduler: str,
    workers: int,
    agent: str,
    seed: int,
    asks: int = 1,
    waves: int = WAVES,
) -> dict:
    scale = SCALE.get(workers, max(0.01, workers / 1000))
    draws, clock = Draws(seed, scale), Clock()
    path = campaign_file(folder, scheduler, workers, asks, waves)
    campaign, _ = load_campaign(path)
    layout = create_run(campaign, path.read_text(), folder / "runs")
    spec, _ = load_spec(campaign.scorecard)
    TimedQueue.waited_s = 0.0
    asynchronous.wait = _timed_wait  # the loop's waiting for answers when nothing trains
    started = time.monotonic()
    outcome = run_in_layout(
        campaign,
        layout,
        agent=ThinkingAgent(draws, clock, think=agent == "llm"),
        scorer_factory=lambda *_: SimScorer(spec, draws, clock),
        stop=StopRequest(),
        trainer=SimTrainer(draws, clock, package),
    )
    ended = time.monotonic()
    t0 = clock.first_start or started
    t_last = clock.last_start or ended
    window = ended - t0
    events = read_events(outcome.layout.ledger)
    n = sum(1 for e in events if e.event == "decision" and e.iteration)
    waited = TimedQueue.waited_s - clock.waited_before_s
    main_s = max(window - waited - clock.think_on_loop_s, 0.0)
    uncompressed = (window - main_s) / scale + main_s
    return {
        "scheduler": scheduler,
        "workers": workers,
        "agent": agent,
        "asks": asks if scheduler == "async" else 1,
        "scale": scale,
        "candidates": n,
        "utilization": clock.busy(t0, ended) / (workers * window),
        # While the agent still proposes: a long campaign's regime, without the last drain.
        "utilization_steady": clock.busy(t0, t_last) / (workers * (t_last - t0)),
        "candidates_per_hour": n / uncompressed * 3600,
        "orchestration_ms_per_candidate": 1000 * main_s / n,
        "orchestration_share": main_s / uncompressed,
        "ledger_rows_per_candidate": len(events) / n,
        "ledger_rows_per_s": len(events) / (ended - started),
        "agent_ms_per_candidate": 1000 * clock.think_s / n,
        "agent_hidden": clock.think_hidden_s / clock.think_s if clock.think_s else None,
        "wall_s": ended - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--agent", choices=["fast", "llm"], default="fast")
    parser.add_argument(
        "--schedulers", nargs="+", choices=["sync", "async"], default=["sync", "async"]
    )
    parser.add_argument("--asks", type=int, nargs="+", default=[1], help="async asks at once")
    parser.add_argument("--waves", type=int, default=WAVES, help="candidates per worker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    candidates.queue.Queue = TimedQueue  # type: ignore[misc]  # the pool's queue, timed
    rows = []
    with tempfile.TemporaryDirectory(prefix="cluster-sim-") as tmp:
        package = model_package(Path(tmp))
        for workers in args.workers:
            for scheduler in args.schedulers:
                for asks in args.asks if scheduler == "async" else [1]:
                    folder = Path(tmp) / f"{scheduler}-{workers}-{asks}"
                    folder.mkdir()
                    row = simulate(
                        folder,
                        package,
                        scheduler,
                        workers,
                        args.agent,
                        args.seed,
                        asks,
                        args.waves,
                    )
                    rows.append(row)
                    print(_line(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _line(r: dict) -> str:
    hidden = "-" if r["agent_hidden"] is None else f"{r['agent_hidden']:.0%}"
    return (
        f"{r['scheduler']:5s} {r['workers']:4d} workers ({r['agent']}, {r['asks']} asks at once, "
        f"x{r['scale']}): "
        f"{r['candidates']} candidates, utilization {r['utilization']:.0%} "
        f"(steady {r['utilization_steady']:.0%}), "
        f"{r['candidates_per_hour']:.0f}/h, orchestration {r['orchestration_ms_per_candidate']:.1f}"
        f" ms/candidate ({r['orchestration_share']:.2%} of wall), "
        f"{r['ledger_rows_per_candidate']:.1f} rows/candidate, "
        f"{r['ledger_rows_per_s']:.0f} rows/s, "
        f"agent {r['agent_ms_per_candidate']:.0f} ms/candidate, hidden {hidden}, "
        f"{r['wall_s']:.0f} s"
    )


if __name__ == "__main__":
    main()
