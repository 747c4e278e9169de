"""The validation suite as data: validated on load, hashed, and documented as it is."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import pytest
import yaml

from mlipilot.errors import MlipilotError
from mlipilot.validation.suite import GROUPS, Check, load_suite

SUITES = Path(__file__).resolve().parents[2] / "validation"
CU = SUITES / "cu-emt.yaml"


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def _cu() -> dict:
    return yaml.safe_load(CU.read_text())


def test_the_cu_suite_loads_with_every_group_and_its_files_hash() -> None:
    suite, sha = load_suite(CU)
    assert sha == hashlib.sha256(CU.read_bytes()).hexdigest()
    assert (suite.name, suite.version, suite.element) == ("cu-emt", 1, "Cu")
    assert list(suite.groups()) == list(GROUPS)
    for group in suite.groups().values():  # every metric a group measures is checked
        assert set(group.checks) == set(group.METRICS)
    assert all(c.unit and c.why for _, c in suite.checks().values())


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d.update(thresholds={}), "thresholds: unknown key"),
        (lambda d: d["vacancy"].update(supercel=3), "vacancy.supercel: unknown key"),
        (
            lambda d: d["nve"]["checks"]["nve_drift_meV_per_atom_per_ps"].update(maximum=1),
            "nve.checks.nve_drift_meV_per_atom_per_ps.maximum: unknown key",
        ),
        (lambda d: d["phonons"].update(supercell=1), "phonons.supercell"),
        (lambda d: d["elastic"]["checks"]["c11_GPa"].pop("unit"), "elastic.checks.c11_GPa.unit"),
    ],
)
def test_a_bad_suite_is_refused_with_the_file_and_the_key_named(
    tmp_path: Path, edit, key: str
) -> None:
    doc = _cu()
    edit(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(MlipilotError) as err:
        load_suite(path)
    assert f"validation suite {path}" in str(err.value)
    assert key in str(err.value)


def test_a_check_needs_exactly_one_tolerance(tmp_path: Path) -> None:
    doc = _cu()
    doc["vacancy"]["checks"]["vacancy_formation_eV"]["relative"] = 0.1  # beside absolute
    with pytest.raises(MlipilotError, match=r"vacancy_formation_eV.*exactly one of"):
        load_suite(_write(tmp_path, doc))
    del doc["vacancy"]["checks"]["vacancy_formation_eV"]["relative"]
    del doc["vacancy"]["checks"]["vacancy_formation_eV"]["absolute"]
    with pytest.raises(MlipilotError, match=r"vacancy_formation_eV.*exactly one of"):
        load_suite(_write(tmp_path, doc))


def test_a_check_on_a_metric_the_group_does_not_measure_is_refused(tmp_path: Path) -> None:
    doc = _cu()
    doc["surfaces"]["checks"]["surface_energy_211_J_per_m2"] = {
        "relative": 0.1,
        "unit": "J/m²",
        "why": "not measured",
    }
    with pytest.raises(MlipilotError, match=r"surfaces.*surface_energy_211_J_per_m2"):
        load_suite(_write(tmp_path, doc))


def test_a_ramp_bound_above_its_end_is_refused(tmp_path: Path) -> None:
    doc = _cu()
    doc["heating_ramp"]["checks"]["ramp_failure_free_K"]["min"] = 3500
    with pytest.raises(MlipilotError, match=r"heating_ramp.*above end_K 3000"):
        load_suite(_write(tmp_path, doc))


def test_a_suite_without_any_group_is_refused(tmp_path: Path) -> None:
    doc = {k: v for k, v in _cu().items() if k not in GROUPS}
    with pytest.raises(MlipilotError, match="no group of checks"):
        load_suite(_write(tmp_path, doc))


def _check(**tolerance: float) -> Check:
    return Check(unit="u", why="w", **tolerance)


@pytest.mark.parametrize(
    ("check", "value", "reference", "passed"),
    [
        (_check(absolute=0.02), 3.60, 3.61, True),
        (_check(absolute=0.02), 3.58, 3.61, False),
        (_check(relative=0.1), 109.0, 100.0, True),
        (_check(relative=0.1), 89.0, 100.0, False),
        (_check(relative=0.1), -105.0, -100.0, True),  # against |reference|
        (_check(max=5.0), 4.0, 0.001, True),
        (_check(max=5.0), 6.0, 0.001, False),
        (_check(min=3000.0), 3000.0, 3000.0, True),
        (_check(min=3000.0), 2999.0, 3000.0, False),
        (_check(absolute=0.0), 0.0, 0.0, True),
        (_check(absolute=0.0), 1.0, 0.0, False),
        (_check(max=5.0), None, 0.001, False),  # not measured: failed
        (_check(max=5.0), math.nan, 0.001, False),
        (_check(absolute=1.0), 1.0, None, False),  # nothing to compare against
    ],
)
def test_a_check_passes_within_its_tolerance_only(
    check: Check, value: float | None, reference: float | None, passed: bool
) -> None:
    assert check.passes(value, reference) is passed


def test_a_tolerance_reads_with_its_unit() -> None:
    assert Check(absolute=0.02, unit="Å", why="w").describe() == "± 0.02 Å"
    assert Check(relative=0.1, unit="GPa", why="w").describe() == "± 10 %"
    assert Check(max=5, unit="meV/atom/ps", why="w").describe() == "≤ 5 meV/atom/ps"
    assert Check(min=3000, unit="K", why="w").describe() == "≥ 3000 K"


ROW = re.compile(r"^\| `(?P<metric>\w+)` \| (?P<tolerance>[^|]+?) \|")


def test_the_readme_quotes_each_check_as_the_suite_has_it() -> None:
    text = (SUITES / "README.md").read_text()
    documented = {m["metric"]: m["tolerance"] for m in map(ROW.match, text.splitlines()) if m}
    suites = [load_suite(SUITES / f"{name}.yaml")[0] for name in ("cu-emt", "qm7")]
    checks = {metric: c for suite in suites for metric, (_, c) in suite.checks().items()}
    assert documented == {metric: c.describe() for metric, c in checks.items()}
