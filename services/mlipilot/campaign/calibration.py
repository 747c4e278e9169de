"""``mlipilot calibrate``: measure a campaign's baseline and an expert recipe, then propose the
scorecard version that fails the one and passes the other (``scoring/calibration.py``).

Both recipes train exactly as the campaign's candidates would (its data, epochs, device and
threads) and are scored by its scorecard, the baseline's model as the throughput yardstick
for both. The new version is written as YAML with the measurements in its header, so the
thresholds say where they came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlipilot.config import Campaign
from mlipilot.data.campaign_data import ensure_campaign_data
from mlipilot.errors import MlipilotError
from mlipilot.recipe import Recipe
from mlipilot.scoring.calibration import Calibration, propose
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.scorecard import Scorecard
from mlipilot.scoring.spec import load_spec
from mlipilot.training.trainer import TrainingBudget, train_recipe


@dataclass(frozen=True)
class Measured:
    baseline: ScoreResult
    expert: ScoreResult
    train_seconds: dict[str, float]


def measure(
    campaign: Campaign, expert: Recipe, work_dir: Path, say: Callable[[str], None]
) -> Measured:
    """Train and score the campaign's baseline and ``expert`` as its candidates would be."""
    data = ensure_campaign_data(campaign.data, progress=say)
    spec, spec_hash = load_spec(campaign.scorecard)
    scorecard = Scorecard(spec, spec_hash, data.load("test"), data.hash("test"))
    budget = TrainingBudget(
        epochs=campaign.budget.epochs, max_seconds=campaign.budget.max_train_seconds
    )
    models: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for name, recipe in (("baseline", campaign.baseline), ("expert", expert)):
        say(f"training the {name} recipe ({budget.epochs} epochs)")
        outcome = train_recipe(
            recipe,
            train_file=data.path("train"),
            atomic_numbers=data.atomic_numbers("train"),
            work_dir=work_dir / name,
            budget=budget,
            device=campaign.compute.device,
            threads=campaign.compute.torch_threads,
        )
        if outcome.model_path is None:
            raise MlipilotError(
                f"calibration: the {name} recipe did not train ({outcome.status}: "
                f"{outcome.cause}); see {outcome.log_path}"
            )
        models[name], seconds[name] = outcome.model_path, outcome.wall_s
    results = {}
    for name, model in models.items():
        say(f"scoring the {name} model")
        results[name] = scorecard.evaluate(
            model, baseline_model_path=models["baseline"], out_dir=work_dir / name
        )
    return Measured(results["baseline"], results["expert"], seconds)


def write_scorecard(calibration: Calibration, measured: Measured, source: Path, out: Path) -> Path:
    """The new version as YAML, its header saying how each bound was set."""
    lines = [
        f"# {calibration.spec.name} v{calibration.spec.version}: written by `mlipilot calibrate` "
        f"from {calibration.derived_from} ({source.name}).",
        f"# Accuracy bounds: the expert's value + {calibration.margin:.0%}, rounded up to two "
        "significant digits; floors unchanged.",
        "#   metric: baseline | expert -> bound (was)",
    ]
    for c in calibration.changes:
        lines.append(
            f"#   {c.metric}: {c.baseline:.4g} | {c.expert:.4g} -> {c.op} {c.new:.4g} "
            f"({c.old:.4g}) {c.unit}"
        )
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in measured.train_seconds.items())
    lines.append(f"# Training wall time: {seconds}.")
    body = yaml.safe_dump(
        calibration.spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
    load_spec(out)  # what was written reads back as a valid scorecard
    return out


def calibrate(
    campaign: Campaign,
    expert: Recipe,
    margin: float,
    out: Path,
    work_dir: Path,
    name: str | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[Calibration, Measured]:
    spec, _ = load_spec(campaign.scorecard)
    measured = measure(campaign, expert, work_dir, say)
    calibration = propose(spec, measured.baseline.metrics, measured.expert.metrics, margin, name)
    write_scorecard(calibration, measured, Path(campaign.scorecard), out)
    return calibration, measured
