"""The shipped scorecards are calibrated: each example campaign's baseline is infeasible and an
expert's recipe is feasible, both trained for real with the campaign's own data and budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlipilot.config import load_campaign
from mlipilot.data.campaign_data import ensure_campaign_data
from mlipilot.recipe import recipe_from_mapping
from mlipilot.scoring.scorecard import Scorecard
from mlipilot.scoring.spec import load_spec
from mlipilot.training.trainer import TrainingBudget, train_recipe

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("campaign_name", "expert_name"),
    [("cu-emt-quick", "cu-emt-expert"), ("qm7-quick", "qm7-expert")],
)
def test_example_campaign_baseline_infeasible_expert_feasible(
    tmp_path: Path, campaign_name: str, expert_name: str
) -> None:
    campaign, _ = load_campaign(REPO / "examples" / f"{campaign_name}.yaml")
    expert_file = REPO / "examples" / "recipes" / f"{expert_name}.yaml"
    expert = recipe_from_mapping(yaml.safe_load(expert_file.read_text()), str(expert_file))
    # The campaign's own data settings, built afresh here rather than in the repository.
    data_config = campaign.data.model_copy(update={"path": tmp_path / "data"})
    data = ensure_campaign_data(data_config)
    spec, spec_hash = load_spec(campaign.scorecard)
    scorecard = Scorecard(spec, spec_hash, data.load("test"), data.hash("test"))
    # The campaign's epochs; the wall-clock guard is not under test here, and a busy machine
    # must not turn a calibration check into a time-out.
    budget = TrainingBudget(epochs=campaign.budget.epochs, max_seconds=3600)

    def train(recipe, name):
        outcome = train_recipe(
            recipe,
            train_file=data.path("train"),
            atomic_numbers=data.atomic_numbers("train"),
            work_dir=tmp_path / name,
            budget=budget,
        )
        assert outcome.status == "ok", outcome.cause
        return outcome.model_path

    base_model = train(campaign.baseline, "baseline")
    expert_model = train(expert, "expert")
    base = scorecard.evaluate(base_model, baseline_model_path=base_model, out_dir=tmp_path / "b")
    best = scorecard.evaluate(expert_model, baseline_model_path=base_model, out_dir=tmp_path / "e")
    assert not base.feasible, base.metrics
    assert best.feasible, (best.metrics, [c.metric for c in best.violated()])
