"""``mlipilot calibrate`` for real: a tiny Cu campaign's baseline and the expert recipe trained
and scored, and a new scorecard version written that fails the one and passes the other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from factories import write_tiny_campaign

from mlipilot.scoring.spec import load_spec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_calibrate_writes_a_version_that_separates_baseline_and_expert(tmp_path: Path) -> None:
    campaign = write_tiny_campaign(tmp_path, name="tiny-cal", n_train=16, epochs=4)
    out = tmp_path / "cu-tiny-v2.yaml"
    proc = subprocess.run(
        [
            sys.executable, "-m", "mlipilot.cli", "calibrate", str(campaign),
            "--expert", str(REPO / "examples" / "recipes" / "cu-emt-expert.yaml"),
            "--out", str(out), "--margin", "0.1", "--work", str(tmp_path / "work"),
        ],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    old, _ = load_spec(tmp_path / "spec.yaml")
    new, _ = load_spec(out)
    assert new.version == old.version + 1
    text = out.read_text()
    assert "written by `mlipilot calibrate`" in text and "baseline | expert" in text
    assert "baseline fails:" in proc.stdout
    # The table's numbers and the file agree: each accuracy bound is above the expert's value.
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in {c.metric for c in new.constraints} and "<=" in parts:
            expert, bound = float(parts[2]), float(parts[4])
            assert bound >= expert * 1.1 * 0.999
            assert new.constraint(parts[0]).threshold == pytest.approx(bound, rel=1e-3)
