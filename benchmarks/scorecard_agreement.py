"""Scorecard against validation, campaign by campaign, and what a new scorecard version changes.

For every validated candidate of each run (a campaign with ``validation.accepts: true``
validates every accepted one, and always its best): the verdict of the run's own scorecard,
the validation suite's (every check passed or not), and the verdict the other scorecard
(``--scorecard``, e.g. v2) gives the same model. Only the criteria the run's scorecard lacks
are measured anew, on the candidate's model package and the run's own test split; the rest
are the run's measurements, so nothing is retrained. Agreement is the share of validated
models on which the scorecard's feasibility and the suite's all-pass verdict agree.

    .venv/bin/python benchmarks/scorecard_agreement.py RUN [RUN ...] \\
        [--scorecard scorecard/cu-emt-v2.yaml] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlipilot.config import Campaign
from mlipilot.data.dataset import open_dataset
from mlipilot.ledger.events import ValidationDetail
from mlipilot.report.ledger_view import load_run
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.short_range import probe_short_range
from mlipilot.scoring.spec import SHORT_RANGE_METRIC, load_spec

ROOT = Path(__file__).resolve().parents[1]


def rows_of(run_dir: Path, scorecard: Path) -> list[dict[str, object]]:
    view = load_run(run_dir)
    other, other_hash = load_spec(scorecard)
    campaign = Campaign.model_validate_json((run_dir / "campaign.json").read_text())
    test = open_dataset(campaign.data.path).load("test")  # as the run scored it (hashes checked)
    new = {c.metric for c in other.constraints} - {c.metric for c in view.spec.constraints}
    unknown = new - {SHORT_RANGE_METRIC}
    if unknown:
        raise SystemExit(f"{scorecard}: cannot measure {sorted(unknown)} without retraining")
    accepted = {d.candidate for d in view.decisions if d.decision in ("ACCEPT", "BASELINE")}
    rows = []
    for v in view.validations:
        name = v.candidate or ""
        result_file = run_dir / "candidates" / name / "result.json"
        if name not in view.evaluations or not result_file.is_file():
            continue
        own = ScoreResult.model_validate_json(result_file.read_text())
        metrics = dict(own.metrics)
        if SHORT_RANGE_METRIC in new and other.short_range is not None:
            model = run_dir / "candidates" / name / "model-package.pt"
            probe, _ = probe_short_range(
                model, test[other.short_range.start_frame], other.short_range
            )
            metrics.update(probe)
        judged = ScoreResult.judged(other, metrics, spec_hash=other_hash, test_hash=own.test_hash)
        checks = v.details(ValidationDetail).checks
        failing = [str(c.get("metric")) for c in checks if not c.get("passed")]
        rows.append(
            {
                "run": run_dir.name,
                "candidate": name,
                "kept": name in accepted,
                "own_feasible": own.feasible,
                "other_feasible": judged.feasible,
                "other_violated": [c.metric for c in judged.violated()],
                "short_range": metrics.get(SHORT_RANGE_METRIC),
                "checks_passed": len(checks) - len(failing),
                "checks": len(checks),
                "failing": failing,
            }
        )
    return rows


def _fraction(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


def agreement(rows: list[dict[str, object]], key: str) -> str:
    agree = sum(bool(r[key]) == (not r["failing"]) for r in rows)
    return f"{agree}/{len(rows)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--scorecard", type=Path, default=ROOT / "scorecard" / "cu-emt-v2.yaml")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    everything = []
    for run in args.runs:
        rows = rows_of(run, args.scorecard)
        everything += rows
        print(f"\n{run.name}: {len(rows)} validated models")
        print(" candidate  kept  own   other  short_range  validation  failing")
        for r in rows:
            print(
                f" {r['candidate']:<9}  {'yes' if r['kept'] else 'no':<4}  "
                f"{'feas' if r['own_feasible'] else 'inf':<4}  "
                f"{'feas' if r['other_feasible'] else 'inf':<5}  "
                f"{_fraction(r['short_range']):<11}  "
                f"{r['checks_passed']}/{r['checks']:<8}  {', '.join(r['failing'])}"  # type: ignore[arg-type]
            )
        print(
            f" agreement with validation: own scorecard {agreement(rows, 'own_feasible')}, "
            f"{args.scorecard.name} {agreement(rows, 'other_feasible')}"
        )
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
