"""Scorecard v2's short-range probe on a real MACE package, through the scorecard itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from factories import tiny_spec, write_tiny_campaign

from mlipilot.campaign.loop import run_campaign
from mlipilot.config import load_campaign
from mlipilot.ledger import Ledger
from mlipilot.ledger.events import EvaluationDetail
from mlipilot.scoring.scorecard import Scorecard
from mlipilot.scoring.short_range import pushed_pair_path, rise_fraction
from mlipilot.scoring.spec import load_spec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

V2 = Path(__file__).resolve().parents[2] / "scorecard" / "cu-emt-v2.yaml"


def test_v2_scores_the_pushed_pair_of_a_trained_model(
    tiny_cu_model: Path, cu_test_frames: list[Atoms], tmp_path: Path
) -> None:
    spec, sha = load_spec(V2)
    short = {"nvt_steps": 5, "nve_steps": 5, "temperatures_K": [600.0]}
    quick = spec.model_copy(
        update={
            "md": spec.md.model_copy(update=short),
            "throughput": spec.throughput.model_copy(update={"md_steps": 2, "repeats": 1}),
        }
    )
    result = Scorecard(quick, sha, cu_test_frames, "test-hash").evaluate(
        tiny_cu_model, baseline_model_path=tiny_cu_model, out_dir=tmp_path
    )
    curve = result.details["short_range"]
    dists, _ = pushed_pair_path(cu_test_frames[0], spec.short_range)
    assert curve["distance_A"] == pytest.approx(list(dists))
    energies = np.array(curve["energy_eV"])
    measured = result.metrics["short_range_rise_fraction"]
    assert measured == rise_fraction(energies)
    # The tests' tiny model (15 epochs, no pair repulsion, data no closer than ~2.1 Å) has
    # the hole the validation suite finds on its pushed-atom path; EMT on the same path has none.
    emt = []
    for atoms in pushed_pair_path(cu_test_frames[0], spec.short_range)[1]:
        atoms.calc = EMT()
        emt.append(atoms.get_potential_energy())
    assert rise_fraction(np.array(emt)) == 1.0
    assert measured < 1.0
    assert "short_range_rise_fraction" in [c.metric for c in result.violated()]


def test_a_v2_campaign_records_the_probe_and_its_curve_in_the_ledger(tmp_path: Path) -> None:
    spec = tiny_spec()
    spec["short_range"] = {"from_A": 2.3, "to_A": 1.2, "step_A": 0.05}
    spec["constraints"].append(
        {"metric": "short_range_rise_fraction", "min": 1.0, "unit": "fraction of steps"}
    )
    path = write_tiny_campaign(tmp_path, name="v2", spec=spec, iterations=0)
    campaign, _ = load_campaign(path)
    run_campaign(campaign, path, tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").iterdir()
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        (evaluation,) = ledger.events("evaluation")
    curve = evaluation.details(EvaluationDetail).short_range
    assert curve is not None and len(curve["distance_A"]) == len(curve["energy_eV"]) == 23
    assert evaluation.metrics is not None
    assert evaluation.metrics["short_range_rise_fraction"] == rise_fraction(
        np.array(curve["energy_eV"])
    )
