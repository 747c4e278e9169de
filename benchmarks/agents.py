"""Agents side by side: several seeds of each on the same campaign, scorecard and budget.

The paper's agent benchmark, on this machine: the rule-based researcher, random search, Optuna
and any OpenAI-compatible model server (``--llm LABEL BASE_URL MODEL``; `make llm-local` serves
a real Qwen at http://127.0.0.1:8765/v1) each run the campaign once per seed, one run at a time
(so no run slows another). Each run is a normal campaign folder under ``--out``; the campaign's
validation is left out (it judges models, not agents). Printed and written to
``<out>/agents.md``, per agent over its runs:

- feasible: runs whose best model is feasible;
- to feasible: candidates trained before the first feasible one (median, min-max);
- composite: the final best composite, of feasible runs (median, min-max);
- tokens/iteration, tokens/accept: an LLM's prompt + completion tokens per iteration and per
  accepted candidate;
- valid calls: the share of the model's answers that were valid (not refused, not without a
  call);
- agent s/iteration: seconds spent asking the model, per iteration.

``<out>/compare.html`` (``mlipilot compare`` over every run) draws score convergence per run,
the final ranking and tokens against score.

``--export DIR`` copies what the table and figures are made from (``stats.jsonl``, each run's
ledger and scorecard) to DIR, a folder small enough to commit: ``--summarize --out DIR`` draws
them again there, and a later benchmark goes on from them (``--first-seed``).

    .venv/bin/python benchmarks/agents.py --seeds 3 --iterations 10 \\
        --llm qwen http://127.0.0.1:8765/v1 Qwen2.5-Coder-1.5B-Instruct
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from mlipilot.campaign.loop import run_campaign
from mlipilot.config import load_campaign
from mlipilot.ledger import LedgerEvent, read_events
from mlipilot.ledger.events import AgentCallDetail
from mlipilot.ledger.history import token_totals
from mlipilot.report.compare import build_comparison

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = ("rule-based", "random", "optuna")


@dataclass
class AgentSpec:
    label: str
    config: dict[str, Any]  # the campaign's agent: block


@dataclass
class RunStats:
    agent: str
    seed: int
    run_dir: Path
    wall_s: float
    feasible: bool
    to_feasible: int | None  # candidates trained before the first feasible one, baseline too
    composite: float | None
    accepts: int
    iterations: int
    tokens: int
    answers: int  # model answers (chat completions)
    bad_answers: int
    agent_s: float

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "run_dir": str(self.run_dir)})

    @classmethod
    def from_json(cls, line: str) -> RunStats:
        data = json.loads(line)
        return cls(**{**data, "run_dir": Path(data["run_dir"])})


def campaign_for(base_file: Path, agent: AgentSpec, seed: int, iterations: int | None) -> str:
    """The campaign file of one run: ``base_file`` with this agent and seed, paths made
    absolute (the run's file lives elsewhere), and no validation."""
    data = yaml.safe_load(base_file.read_text())
    data["data"]["path"] = str((base_file.parent / data["data"]["path"]).resolve())
    data["scorecard"] = str((base_file.parent / data["scorecard"]).resolve())
    data["name"] = f"{data['name']}-{agent.label}-s{seed}"
    data["agent"] = {**agent.config, "seed": seed}
    data.pop("validation", None)
    if iterations is not None:
        data["budget"]["iterations"] = iterations
    return yaml.safe_dump(data, sort_keys=False)


def run_stats(agent: str, seed: int, run_dir: Path, wall_s: float) -> RunStats:
    events = read_events(run_dir / "ledger.sqlite")
    evaluations = [e for e in events if e.event == "evaluation"]
    first = next((i for i, e in enumerate(evaluations) if e.feasible), None)
    decisions = [e for e in events if e.event == "decision"]
    calls = [e for e in events if e.event == "agent_call"]
    feasible_composites = [e.composite for e in evaluations if e.feasible and e.composite]
    answers = sum(c.details(AgentCallDetail).requests for c in calls)
    return RunStats(
        agent=agent,
        seed=seed,
        run_dir=run_dir,
        wall_s=wall_s,
        feasible=first is not None,
        to_feasible=None if first is None else first + 1,
        composite=min(feasible_composites) if feasible_composites else None,
        accepts=sum(1 for d in decisions if d.decision == "ACCEPT"),
        iterations=max((e.iteration or 0 for e in events), default=0),
        tokens=sum(token_totals(calls)),
        answers=answers,
        bad_answers=sum(_bad_answers(c) for c in calls),
        agent_s=sum(c.details(AgentCallDetail).duration_s for c in calls),
    )


def _bad_answers(call: LedgerEvent) -> int:
    """Answers the agent refused: a tool answer or a reminder that starts with "error"."""
    transcript = call.details(AgentCallDetail).transcript
    return sum(
        1
        for m in transcript
        if m.get("role") in ("tool", "user") and str(m.get("content", "")).startswith("error")
    )


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    mid = statistics.median(values)
    if len(values) == 1:
        return format(mid, fmt)
    return f"{format(mid, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def table(stats: list[RunStats]) -> str:
    head = "| agent | runs | feasible | to feasible | composite | tokens/iter | tokens/accept "
    head += "| valid calls | agent s/iter | wall min/run |"
    lines = [head, "|" + "---|" * 10]
    for agent in dict.fromkeys(s.agent for s in stats):
        runs = [s for s in stats if s.agent == agent]
        iters = sum(s.iterations for s in runs) or 1
        accepts = sum(s.accepts for s in runs)
        tokens = sum(s.tokens for s in runs)
        answers = sum(s.answers for s in runs)
        llm = answers > 0
        cells = [
            agent,
            str(len(runs)),
            f"{sum(s.feasible for s in runs)}/{len(runs)}",
            _spread([s.to_feasible for s in runs if s.to_feasible is not None], ".0f"),
            _spread([s.composite for s in runs if s.composite is not None], ".3f"),
            f"{tokens / iters:.0f}" if llm else "—",
            (f"{tokens / accepts:.0f}" if accepts else "no accept") if llm else "—",
            f"{1 - sum(s.bad_answers for s in runs) / answers:.0%}" if llm else "—",
            f"{sum(s.agent_s for s in runs) / iters:.1f}" if llm else "—",
            f"{statistics.mean(s.wall_s for s in runs) / 60:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaign", type=Path, default=REPO / "examples" / "cu-emt-quick.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="to go on with a benchmark")
    parser.add_argument("--iterations", type=int, default=None, help="default: the campaign's")
    parser.add_argument("--agents", nargs="*", default=list(BUILT_IN), choices=BUILT_IN)
    parser.add_argument(
        "--llm",
        nargs=3,
        action="append",
        default=[],
        metavar=("LABEL", "BASE_URL", "MODEL"),
        help="an OpenAI-compatible server's model, in tools mode (repeatable)",
    )
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per model call")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-agents")
    parser.add_argument(
        "--summarize", action="store_true", help="only the table and figures of the runs in --out"
    )
    parser.add_argument(
        "--export", type=Path, help="copy stats, ledgers and scorecards of --out's runs here"
    )
    args = parser.parse_args()
    if args.summarize:
        summarize(args.out, earlier_runs(args.out))
        return
    if args.export:
        export(args.out, args.export)
        return

    agents = [AgentSpec(kind, {"kind": kind}) for kind in args.agents]
    for label, url, model in args.llm:
        config = {"kind": "llm", "base_url": url, "model": model, "timeout_s": args.timeout_s}
        agents.append(AgentSpec(label, config | {"max_completion_tokens": 512}))
    args.out.mkdir(parents=True, exist_ok=True)
    stats = earlier_runs(args.out)  # a benchmark gone on with (--first-seed) counts them all
    # Seeds outermost: a benchmark cut short has run every agent on the same seeds.
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for agent in agents:
            file = args.out / "campaigns" / f"{agent.label}-s{seed}.yaml"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(campaign_for(args.campaign, agent, seed, args.iterations))
            campaign, _ = load_campaign(file)
            start = time.monotonic()
            outcome = run_campaign(campaign, file, args.out / "runs")
            run = run_stats(
                agent.label, seed, outcome.layout.ledger.parent, time.monotonic() - start
            )
            stats.append(run)
            with (args.out / "stats.jsonl").open("a") as f:
                f.write(run.to_json() + "\n")
            print(f"{agent.label} seed {seed}: {run}", flush=True)
    summarize(args.out, stats)


def earlier_runs(out: Path) -> list[RunStats]:
    """The runs a benchmark in ``out`` has finished (``stats.jsonl``, a line each); a relative
    run folder is under ``out``."""
    path = out / "stats.jsonl"
    if not path.exists():
        return []
    runs = [RunStats.from_json(line) for line in path.read_text().splitlines() if line]
    for run in runs:
        run.run_dir = out / run.run_dir  # an absolute run_dir stays as it is
    return runs


def export(out: Path, dest: Path) -> None:
    """What the table and figures need of ``out``'s runs, copied to ``dest``: stats (run
    folders relative), and of each run only its ledger and scorecard. A run already there
    (a benchmark exported before) is kept."""
    runs = earlier_runs(out)
    kept = earlier_runs(dest)
    have = {(r.agent, r.seed, r.run_dir.name) for r in kept}
    lines = _stats_lines(dest)
    for run in runs:
        if (run.agent, run.seed, run.run_dir.name) in have:
            continue
        folder = dest / "runs" / run.run_dir.name
        folder.mkdir(parents=True, exist_ok=True)
        with (
            sqlite3.connect(run.run_dir / "ledger.sqlite") as src,
            sqlite3.connect(folder / "ledger.sqlite") as copy,
        ):
            src.backup(copy)  # the write-ahead log folded in: one file
        shutil.copyfile(run.run_dir / "scorecard.yaml", folder / "scorecard.yaml")
        moved = RunStats(**{**asdict(run), "run_dir": Path("runs") / run.run_dir.name})
        lines.append(moved.to_json())
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "stats.jsonl").write_text("".join(line + "\n" for line in lines))
    print(f"{dest}: {len(lines)} runs")


def _stats_lines(folder: Path) -> list[str]:
    path = folder / "stats.jsonl"
    return [ln for ln in path.read_text().splitlines() if ln] if path.exists() else []


def summarize(out: Path, stats: list[RunStats]) -> None:
    text = table(stats)
    (out / "agents.md").write_text(text + "\n")
    print(text)
    kept = [s.run_dir for s in stats if (s.run_dir / "ledger.sqlite").is_file()]
    if len(kept) < len(stats):  # runs of an earlier session whose folders were not kept
        print(f"figures: {len(stats) - len(kept)} runs without a ledger here are in the table only")
    page = build_comparison(kept, out / "compare.html")
    print(f"figures: {page}")


if __name__ == "__main__":
    main()
