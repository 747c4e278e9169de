"""The trainer reports a failed mace_run_train with the child's own error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlipilot.recipe import Recipe
from mlipilot.training.trainer import TrainingBudget, train_recipe

pytestmark = pytest.mark.slow


def test_a_crashing_mace_run_is_a_failed_outcome_with_its_cause(tmp_path: Path) -> None:
    outcome = train_recipe(
        Recipe(),
        train_file=tmp_path / "missing.xyz",
        atomic_numbers=[29],
        work_dir=tmp_path / "work",
        budget=TrainingBudget(epochs=2, max_seconds=300),
    )
    assert outcome.status == "failed"
    assert outcome.model_path is None
    assert "exited with code 1" in (outcome.cause or "")
    assert "Error: " in (outcome.cause or ""), outcome.cause  # the child's exception line
    assert "mlipilot: training failed" in outcome.log_path.read_text()
