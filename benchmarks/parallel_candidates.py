"""Wall time per candidate with 1 and 2 candidates per iteration on Ray, run side by side.

The same Cu EMT campaign (same data, baseline, scorecard and the same four proposals after the
baseline) runs twice on one local Ray instance: one candidate per iteration (four iterations)
and two per iteration (two iterations). Printed for each: wall time per candidate (from the
first proposal iteration's start to the campaign's end, over the candidates), mean training
time per candidate, and Ray's overhead per candidate (from handing the training to Ray to
the actor starting it); then the ratio. Ratios only: this machine is noisy.

Ray binds the machine's outside address, so run it in a loopback-only network namespace:

    ip netns add bench; ip netns exec bench ip link set lo up
    ip netns exec bench env RAY_AUTH_MODE=disabled \
        .venv/bin/python benchmarks/parallel_candidates.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from datetime import datetime
from pathlib import Path

import ray
import yaml

from mlipilot.agents.base import AgentGaveUp, CampaignState, Proposal
from mlipilot.campaign.loop import run_campaign
from mlipilot.config import load_campaign
from mlipilot.ledger import read_events
from mlipilot.ledger.events import TrainingDetail

REPO = Path(__file__).resolve().parents[1]
# Same-cost proposals (learning rates; none equal to the baseline's, which would be answered
# from the ledger untrained), so both runs train the same work and only the parallelism differs.
PATCHES = [{"lr": lr} for lr in (0.005, 0.02, 0.002, 0.03, 0.008, 0.015)]  # baseline: 0.01


class FixedProposals:
    """Proposes PATCHES in order, each once."""

    name = "fixed"

    def __init__(self) -> None:
        self.used: list[dict] = []

    def propose(self, state: CampaignState) -> Proposal:
        for patch in PATCHES:
            if patch not in self.used:
                self.used.append(patch)
                return Proposal(hypothesis=f"benchmark: {patch}", patch=patch)
        raise AgentGaveUp("no more fixed proposals")


def campaign_file(
    folder: Path, data: Path, per_iteration: int, candidates: int, epochs: int
) -> Path:
    spec = {
        "name": f"bench-k{per_iteration}",
        "data": {"kind": "cu-emt", "path": str(data), "seed": 0, "n_train": 32, "n_test": 8},
        "scorecard": str(REPO / "scorecard" / "cu-emt.yaml"),
        "baseline": {
            "e0s": "average",
            "scaling": "rms_forces_scaling",
            "num_channels": 8,
            "r_max": 4.5,
            "batch_size": 4,
        },
        "budget": {
            "iterations": candidates // per_iteration,
            "epochs": epochs,
            "candidates_per_iteration": per_iteration,
            "max_train_seconds": 900,
        },
        "compute": {"torch_threads": 1, "ray_address": "local"},
    }
    path = folder / f"bench-k{per_iteration}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def measure(path: Path, runs: Path) -> dict[str, float]:
    campaign, _ = load_campaign(path)
    outcome = run_campaign(campaign, path, runs, agent=FixedProposals())
    events = read_events(outcome.layout.ledger)
    start = next(e for e in events if e.event == "iteration_started" and e.iteration == 1)
    end = events[-1]
    trainings = [e for e in events if e.event == "training" and e.iteration]
    n = len(trainings)
    span = (datetime.fromisoformat(end.ts) - datetime.fromisoformat(start.ts)).total_seconds()
    return {
        "candidates": n,
        "wall_per_candidate_s": span / n,
        "train_per_candidate_s": statistics.mean(t.duration_s for t in trainings),
        "ray_overhead_per_candidate_s": statistics.mean(
            t.details(TrainingDetail).dispatch_overhead_s or 0.0 for t in trainings
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=4, help="proposals after the baseline")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = parser.parse_args()
    ray.init(include_dashboard=False, namespace="mlipilot", log_to_driver=False)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    with tempfile.TemporaryDirectory(prefix="mlipilot-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = {}
        for k in (1, 2):
            path = campaign_file(folder, folder / "data", k, args.candidates, args.epochs)
            rows[k] = measure(path, folder / "runs")
    ray.shutdown()
    print(f"{args.candidates} candidates after the baseline, {args.epochs} epochs each, "
          f"{cpus} CPUs in Ray, 1 torch thread per trainer")  # fmt: skip
    print(f"{'per iteration':>14} {'wall/cand s':>12} {'train/cand s':>13} {'Ray overhead s':>15}")
    for k, r in rows.items():
        print(
            f"{k:>14} {r['wall_per_candidate_s']:>12.1f} {r['train_per_candidate_s']:>13.1f} "
            f"{r['ray_overhead_per_candidate_s']:>15.2f}"
        )
    speedup = rows[1]["wall_per_candidate_s"] / rows[2]["wall_per_candidate_s"]
    print(f"wall time per candidate, 1 vs 2 in parallel: {speedup:.2f}x")


if __name__ == "__main__":
    main()
