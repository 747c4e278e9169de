"""The Cu validation suite against EMT: the reference passes its own suite, a model wrong in one
property fails exactly that check, and a real MACE package goes through the whole suite via the
command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ase.calculators.emt import EMT
from factories import WELL_RC, EMTWithShortRangeHole, untrained_mace

from mlipilot.model_files import PACKAGE_NAME, write_package
from mlipilot.validation import ValidationSuite, load_suite, validate
from mlipilot.validation.result import Measurements
from mlipilot.validation.run import measure
from mlipilot.validation.smoothness import smoothness

CU_SUITE = Path(__file__).resolve().parents[2] / "validation" / "cu-emt.yaml"


@pytest.fixture(scope="module")
def cu_suite() -> tuple[ValidationSuite, str]:
    return load_suite(CU_SUITE)


@pytest.fixture(scope="module")
def emt_reference(cu_suite: tuple[ValidationSuite, str]) -> Measurements:
    suite, sha = cu_suite
    return measure(EMT, suite, sha256=sha, who="ASE EMT")


def test_the_hole_makes_a_spurious_extremum_on_the_pushed_atom_path(
    cu_suite: tuple[ValidationSuite, str],
) -> None:
    suite, _ = cu_suite
    emt = smoothness(EMT, "Cu", suite.lattice_a_A, suite.smoothness)
    holed = smoothness(EMTWithShortRangeHole, "Cu", suite.lattice_a_A, suite.smoothness)
    assert emt.values["pair_curve_extrema"] == 0
    assert holed.values["pair_curve_extrema"] == 1
    assert holed.values["pair_energy_at_closest_eV"] < 0 < emt.values["pair_energy_at_closest_eV"]
    assert holed.values["volume_curve_extrema"] == emt.values["volume_curve_extrema"]


@pytest.mark.slow
def test_emt_passes_every_check_of_its_own_suite(
    cu_suite: tuple[ValidationSuite, str], emt_reference: Measurements
) -> None:
    suite, sha = cu_suite
    result = validate(EMT, suite, sha256=sha, model="EMT", reference_measurements=emt_reference)
    assert [c.metric for c in result.checks] == list(suite.checks())
    assert result.failed == []
    # Same code, same seeds, same calculator: every value is the reference's, bit for bit.
    assert {c.metric: c.error for c in result.checks} == {c.metric: 0.0 for c in result.checks}
    assert result.suite.sha256 == sha and result.model.lattice_a0_A == pytest.approx(3.5899, 1e-4)


@pytest.mark.slow
def test_a_short_range_hole_fails_the_pushed_atom_check_and_nothing_else(
    cu_suite: tuple[ValidationSuite, str], emt_reference: Measurements
) -> None:
    suite, sha = cu_suite
    result = validate(
        EMTWithShortRangeHole, suite, sha256=sha, reference_measurements=emt_reference
    )
    assert result.failed == ["pair_curve_extrema"]
    # The hole is never reached elsewhere: every other value is EMT's, not merely close to it.
    untouched = {c.metric: c.error for c in result.checks if c.group != "smoothness"}
    assert untouched == dict.fromkeys(untouched, 0.0)
    ramp = result.model.groups["heating_ramp"].values
    assert ramp["ramp_min_distance_A"] > WELL_RC


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlipilot.cli", "validate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.slow
def test_the_cli_runs_a_mace_package_through_the_whole_suite(
    tmp_path: Path, cu_suite: tuple[ValidationSuite, str]
) -> None:
    suite, sha = cu_suite
    candidate = tmp_path / "candidates" / "it000"
    write_package(untrained_mace([29], [-3.0]), candidate / PACKAGE_NAME)
    out = tmp_path / "validation-out"
    proc = _cli(str(candidate), "--suite", "cu-emt", "--out", str(out), "--torch-threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]  # a report: failed checks exit 0 too
    assert "lattice_constant_A" in proc.stdout and "passed:" in proc.stdout
    result = json.loads((out / "validation.json").read_text())
    assert [c["metric"] for c in result["checks"]] == list(suite.checks())
    assert result["suite"]["sha256"] == sha
    assert result["model"]["who"] == str(candidate / PACKAGE_NAME)
    assert all(c["wall_s"] >= 0 and c["tolerance_text"] for c in result["checks"])
    page = (out / "validation.html").read_text()
    for figure in ("eos", "elastic", "phonons", "pair", "ramp", "nve"):
        assert (out / "validation" / f"{figure}.png").stat().st_size > 0
        assert f"validation/{figure}.png" in page


def test_the_cli_refuses_a_bad_suite_naming_the_file_and_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad-suite.yaml"
    bad.write_text(CU_SUITE.read_text().replace("  max_strain: 0.01", "  max_strain: 0.5"))
    package = tmp_path / PACKAGE_NAME
    package.write_bytes(b"never read: the suite is refused first")
    proc = _cli(str(package), "--suite", str(bad), timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr and "elastic.max_strain" in proc.stderr


def test_the_cli_refuses_a_folder_without_a_model_package(tmp_path: Path) -> None:
    proc = _cli(str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert f"{tmp_path}: no {PACKAGE_NAME}" in proc.stderr
