"""A crystal suite's groups as Ray tasks measure what they measure here: the EMT reference to
the last digit, and a real MACE package (loaded by each task from its file) group by group.

Needs the loopback-only namespace ``make test`` makes (``ray_session``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ase.calculators.emt import EMT
from factories import untrained_mace

from mlipilot.config import RayResources
from mlipilot.model_files import PACKAGE_NAME, write_package
from mlipilot.validation import load_suite, validate
from mlipilot.validation.ray_groups import EMT_SOURCE, fan_out, ray_fan_outs
from mlipilot.validation.run import measure, package_calculator

pytestmark = pytest.mark.slow

CU_SUITE = Path(__file__).resolve().parents[2] / "validation" / "cu-emt.yaml"
# The static groups and the smoothness curves: every kind of group but the long MD ones, which
# the same code path runs (a test of their physics is test_validation_cu.py's).
KEPT = ("equation_of_state", "elastic", "vacancy", "surfaces", "smoothness")


@pytest.fixture(scope="module")
def suite():
    full, sha = load_suite(CU_SUITE)
    dropped = {name: None for name in full.groups() if name not in KEPT}
    return full.model_copy(update=dropped), sha


def test_the_reference_on_ray_measures_what_it_measures_here(ray_session, suite) -> None:
    spec, sha = suite
    here = measure(EMT, spec, sha256=sha, who="ASE EMT")
    there = measure(
        EMT,
        spec,
        sha256=sha,
        who="ASE EMT",
        fan_out=fan_out(EMT_SOURCE, ["Cu"], spec, RayResources(num_cpus=1)),
    )
    assert list(there.groups) == list(KEPT)
    assert there.lattice_a0_A == here.lattice_a0_A
    for name, run in here.groups.items():
        assert there.groups[name].error is None
        assert there.groups[name].values == pytest.approx(run.values, rel=1e-9), name


def test_a_package_is_validated_on_ray_as_it_is_here(ray_session, suite, tmp_path: Path) -> None:
    spec, sha = suite
    package = tmp_path / "it001" / PACKAGE_NAME
    write_package(untrained_mace([29], [-3.0]), package)
    factory = package_calculator(package, ["Cu"])
    here = validate(factory, spec, sha256=sha, model=str(package))
    fan_outs = ray_fan_outs(package, ["Cu"], spec, RayResources(num_cpus=1))
    there = validate(factory, spec, sha256=sha, model=str(package), fan_outs=fan_outs)
    assert [c.metric for c in there.checks] == [c.metric for c in here.checks]
    for mine, theirs in zip(here.checks, there.checks, strict=True):
        assert theirs.passed == mine.passed, mine.metric
        if mine.value is None:
            assert theirs.value is None, mine.metric
        else:  # float64 energies, one thread there and maybe two here: to rounding
            assert theirs.value == pytest.approx(mine.value, rel=1e-6, abs=1e-9), mine.metric


def test_a_package_that_will_not_load_fails_its_groups_not_the_run(
    ray_session, suite, tmp_path: Path
) -> None:
    spec, _ = suite
    broken = tmp_path / "broken" / PACKAGE_NAME
    broken.parent.mkdir()
    broken.write_bytes(b"not a model package")
    runs = fan_out(str(broken), ["Cu"], spec, RayResources(num_cpus=1))(list(KEPT), 3.6, "")
    assert set(runs) == set(KEPT)
    assert all(run.error and "package" in run.error.lower() for run in runs.values())
