"""The scorecard's MD stability stage: the ASE loop against the batched engine, side by side.

The MD stage of scorecard/cu-emt.yaml (its temperatures, timestep, friction and failure tests;
fewer steps unless --steps says otherwise) runs 1, 8 and 32 replicas of 32-atom Cu cells from
the Cu EMT test split, with a model trained by the expert recipe (or --model), on each of:

- ase float64: the reference loop, one MACECalculator call per replica and step (the common
  practice, and this project's MD stage before the batched engine);
- ase float32: the same loop with the model in float32;
- batched float64 and batched float32 (cu-emt.yaml's setting).

Configurations alternate within each round, so a busy machine slows all alike; printed are the
median replica-steps per second over the rounds and the ratios to the ASE float64 loop.

    .venv/bin/python benchmarks/md_stability.py [--model PATH] [--steps 50] [--rounds 2]

On a machine shared with other torch processes, set OMP_WAIT_POLICY=PASSIVE: OpenMP threads that
spin while another process holds the cores made 2-thread runs of either engine 50x slower here.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import yaml

from mlipilot.config import load_campaign
from mlipilot.data.dataset import ensure_cu_emt
from mlipilot.recipe import recipe_from_mapping
from mlipilot.scoring.md_batched import run_replicas_batched
from mlipilot.scoring.md_stability import (
    ReplicaJob,
    ReplicaOutcome,
    load_md_calculator,
    run_md_stability,
    run_replica,
)
from mlipilot.scoring.spec import MDSettings, load_spec
from mlipilot.training.trainer import TrainingBudget, train_recipe

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [("ase", "float64"), ("ase", "float32"), ("batched", "float64"), ("batched", "float32")]


def expert_model(folder: Path) -> tuple[Path, Path]:
    """The quick campaign's data and the expert recipe trained with its budget."""
    campaign, _ = load_campaign(REPO / "examples" / "cu-emt-quick.yaml")
    d = campaign.data
    data = ensure_cu_emt(folder / "data", seed=d.seed, n_train=d.n_train, n_test=d.n_test)
    recipe_file = REPO / "examples" / "recipes" / "cu-emt-expert.yaml"
    recipe = recipe_from_mapping(yaml.safe_load(recipe_file.read_text()), str(recipe_file))
    outcome = train_recipe(
        recipe,
        train_file=data.path("train"),
        atomic_numbers=[29],
        work_dir=folder / "expert",
        budget=TrainingBudget(epochs=campaign.budget.epochs, max_seconds=3600),
    )
    if outcome.model_path is None:
        raise SystemExit(f"training the expert recipe failed: {outcome.cause}")
    return outcome.model_path, data.path("test")


def replica_layout(n: int, max_frames: int) -> tuple[int, int, int]:
    """(start frames, temperatures, seeds) whose product is n: two temperatures when even."""
    temps = 2 if n % 2 == 0 else 1
    rest = n // temps
    most = min(math.isqrt(rest), max_frames)
    frames = max(f for f in range(1, most + 1) if rest % f == 0)
    return frames, temps, rest // frames


def runner(engine: str, device: str) -> Callable[..., list[ReplicaOutcome]]:
    if engine == "batched":
        return partial(run_replicas_batched, device=device)

    def ase_loop(model_path, jobs: list[ReplicaJob], settings: MDSettings, on_steps):
        calc = load_md_calculator(model_path, device=device, dtype=settings.precision)
        return [run_replica(calc, job, settings, on_steps) for job in jobs]

    return ase_loop


def rate(model: Path, frames, md: MDSettings, n: int, device: str, out: Path) -> float:
    """Replica-steps per second of one run of the MD stage (model loading included)."""
    n_frames, n_temps, n_seeds = replica_layout(n, len(frames))
    settings = md.model_copy(
        update={"temperatures_K": md.temperatures_K[:n_temps], "seeds": list(range(n_seeds))}
    )
    start = time.perf_counter()
    report = run_md_stability(
        model, frames[:n_frames], settings, out, runner=runner(settings.engine, device)
    )
    elapsed = time.perf_counter() - start
    unstable = [r.status for r in report.replicas if r.status != "stable"]
    if unstable:
        print(f"  note: {len(unstable)} replicas failed ({sorted(set(unstable))})")
    assert len(report.replicas) == n
    return n * (settings.nvt_steps + settings.nve_steps) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, help="a model package, model-package.pt (default: train one)"
    )
    parser.add_argument("--test-frames", type=Path, help="extxyz start frames (with --model)")
    parser.add_argument("--replicas", default="1,8,32", help="replica counts, comma-separated")
    parser.add_argument("--steps", type=int, default=50, help="NVT+NVE steps per replica (4:1)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per count")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--configs",
        default=",".join(f"{e}:{p}" for e, p in CONFIGS),
        help="engine:precision pairs to run, comma-separated (ratios need ase:float64)",
    )
    args = parser.parse_args()
    configs = [tuple(c.split(":")) for c in args.configs.split(",")]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {CONFIGS}")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="md-bench-") as tmp:
        folder = Path(tmp)
        if args.model:
            model, test_file = args.model, args.test_frames
            if test_file is None:
                raise SystemExit("--model needs --test-frames")
        else:
            model, test_file = expert_model(folder)
        from ase.io import read

        frames = [a for a in read(test_file, ":") if len(a) == 32]
        spec, _ = load_spec(REPO / "scorecard" / "cu-emt.yaml")
        nvt = round(args.steps * spec.md.nvt_steps / (spec.md.nvt_steps + spec.md.nve_steps))
        base = spec.md.model_copy(update={"nvt_steps": nvt, "nve_steps": args.steps - nvt})

        print(f"device: {args.device}, torch threads: {args.threads}, model: {model.name}")
        print(f"load average before: {os.getloadavg()}")
        print(f"MD stage of {spec.name}: {nvt} NVT + {args.steps - nvt} NVE steps per replica")
        rows = []
        for n in (int(x) for x in args.replicas.split(",")):
            rates: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
            for r in range(args.rounds):
                for engine, precision in configs:
                    md = base.model_copy(update={"engine": engine, "precision": precision})
                    out = folder / f"md-{n}-{engine}-{precision}-{r}"
                    rates[engine, precision].append(rate(model, frames, md, n, args.device, out))
            rows.append((n, {c: statistics.median(v) for c, v in rates.items()}))
            runs = "; ".join(
                f"{e} {p} " + " ".join(f"{x:.1f}" for x in v) for (e, p), v in rates.items()
            )
            print(f"  {n} replicas, each round: {runs}")
        print(f"load average after: {os.getloadavg()}")

        ratios = [("batched", p) for p in ("float64", "float32") if ("batched", p) in configs]
        if ("ase", "float64") not in configs:
            ratios = []
        head = ["replicas", *(f"{e} {p}" for e, p in configs)]
        head += [f"batched f{p[-2:]}/ase f64" for _, p in ratios]
        print("\nreplica-steps/s (median of rounds)")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for n, med in rows:
            cells = [f"{med[c]:.1f}" for c in configs]
            cells += [f"{med[c] / med['ase', 'float64']:.2f}x" for c in ratios]
            print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
