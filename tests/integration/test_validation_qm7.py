"""The molecular validation suite against GFN2-xTB: the reference passes the shipped suite's
checks, a model wrong in one property (xTB made stiffer) fails exactly that check, molecules a
model cannot run are left out by name, and the suite's file is checked like a scorecard's.

The runs here take the shipped suite's checks and tolerances as they are, on fewer molecules
and a shorter NVT (2 molecules, 0.1 ps): what is tested is the code and its verdicts, in
seconds; the full suite's own numbers are in validation/README.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from ase.calculators.calculator import all_changes

from mlipilot.errors import MlipilotError
from mlipilot.validation import MoleculeSuite, ValidationSuite, load_suite, validate
from mlipilot.validation.molecules import XtbCalculator, held_out_molecules
from mlipilot.validation.page import write_outputs

SUITES = Path(__file__).resolve().parents[2] / "validation"
STIFFER = 1.3  # frequencies x sqrt(1.3) = 1.14: ~100-400 cm-1 off; the minimum stays put


class StifferXtb(XtbCalculator):
    """GFN2-xTB with energy and forces scaled: the same minima, frequencies too high."""

    implemented_properties: ClassVar[tuple[str, ...]] = ("energy", "forces")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.results = {k: STIFFER * v for k, v in self.results.items()}


@pytest.fixture(scope="module")
def small_suite() -> tuple[MoleculeSuite, str]:
    suite, sha = load_suite(SUITES / "qm7.yaml")
    assert isinstance(suite, MoleculeSuite)
    assert suite.nvt is not None
    small = suite.model_copy(
        update={
            "molecules": suite.molecules.model_copy(update={"last": 2}),
            "nvt": suite.nvt.model_copy(update={"steps": 200}),
        }
    )
    return small, sha


def test_gfn2_xtb_passes_every_check_of_its_own_suite(small_suite, tmp_path: Path) -> None:
    suite, sha = small_suite
    calc = XtbCalculator()
    result = validate(lambda: calc, suite, sha256=sha, model="xtb")
    assert result.reference.who == "GFN2-xTB (tblite)"
    assert result.model.molecules == ["m0299", "m0300"]
    assert {c.metric for c in result.checks} == set(suite.checks())
    assert result.failed == [], [(c.metric, c.value, c.note) for c in result.checks]
    # The page draws the molecular groups and names the molecules it ran.
    _, page = write_outputs(result, tmp_path)
    assert (tmp_path / "validation" / "frequencies.png").stat().st_size > 10_000
    assert (tmp_path / "validation" / "nvt.png").stat().st_size > 10_000
    assert "m0299, m0300" in page.read_text()


def test_a_model_with_the_wrong_curvature_fails_exactly_the_frequency_check(small_suite) -> None:
    suite, sha = small_suite
    result = validate(StifferXtb, suite, sha256=sha, model="stiffer xtb")
    assert result.failed == ["frequency_mae_cm1"], [(c.metric, c.value) for c in result.checks]
    freq = next(c for c in result.checks if c.metric == "frequency_mae_cm1")
    assert freq.value is not None and freq.value > 100  # ~14 % of 1000-3000 cm-1 modes
    assert freq.reference == 0.0
    geometry = next(c for c in result.checks if c.metric == "geometry_bond_mae_A")
    assert geometry.value is not None and geometry.value < 1e-3  # same minimum, scaled forces


def test_molecules_with_elements_the_model_lacks_are_left_out_by_name() -> None:
    suite, _ = load_suite(SUITES / "qm7.yaml")
    assert isinstance(suite, MoleculeSuite)
    calc = XtbCalculator()
    chosen, notes = held_out_molecules(
        suite.molecules.model_copy(update={"last": 3}), {1, 6, 7, 8}, lambda: calc
    )
    # m0298 (the third from the end) holds sulfur; a model of H, C, N, O cannot run it.
    assert [m.mol_id for m in chosen] == ["m0299", "m0300"]
    assert len(notes) == 1 and notes[0].startswith("m0298 left out: the model knows no Z=[16]")
    with pytest.raises(ValueError, match="no held-out molecule the model can run"):
        held_out_molecules(suite.molecules.model_copy(update={"last": 1}), {1}, lambda: calc)


def test_a_suite_file_says_its_kind_and_a_bad_one_names_the_key(tmp_path: Path) -> None:
    cu, _ = load_suite(SUITES / "cu-emt.yaml")  # no kind: a crystal suite, as before
    assert isinstance(cu, ValidationSuite) and cu.kind == "crystal"
    text = (SUITES / "qm7.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("frequency_mae_cm1:", "frequency_rmse_cm1:"))
    with pytest.raises(MlipilotError, match="frequency_rmse_cm1"):
        load_suite(bad)
    bad.write_text(text.replace("level: gfn2-xtb", "level: b3lyp"))
    with pytest.raises(MlipilotError, match="level"):
        load_suite(bad)
