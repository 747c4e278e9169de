"""The scorecard's short-range probe: the pushed pair's geometry, and its verdict on EMT and on
EMT with a hand-made hole (a calculator stands in for the model: the probe's MACE path is the
accuracy stage's, tested in tests/integration/test_scorecard_short_range.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from factories import MINIMAL_MD, EMTWithShortRangeHole
from pydantic import ValidationError

from mlipilot.scoring.short_range import pushed_pair_path, rise_fraction
from mlipilot.scoring.spec import ScorecardSpec, ShortRangeSettings

SETTINGS = ShortRangeSettings(from_A=2.3, to_A=1.2)


def _crystal() -> object:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    return atoms


def _energies(calc: type[EMT], frames: list) -> np.ndarray:
    out = []
    for atoms in frames:
        atoms.calc = calc()
        out.append(atoms.get_potential_energy())
    return np.array(out)


def test_the_pushed_atom_sits_at_each_distance_from_its_neighbour_across_the_boundary() -> None:
    crystal = _crystal()
    # Atom 0 sits at the cell's corner: its nearest neighbour is a periodic image.
    dists, frames = pushed_pair_path(crystal, SETTINGS)
    assert dists[0] == pytest.approx(2.3) and dists[-1] == pytest.approx(1.2)
    assert len(frames) == len(dists) == 56
    lengths = crystal.get_distances(0, range(1, len(crystal)), mic=True)
    j = 1 + int(np.argmin(lengths))
    for d, atoms in zip(dists, frames, strict=True):
        assert atoms.get_distance(0, j, mic=True) == pytest.approx(d, abs=1e-9)
        assert np.array_equal(atoms.positions[1:], crystal.positions[1:])
        others = np.delete(atoms.get_distances(0, range(1, len(atoms)), mic=True), j - 1)
        assert others.min() > d - 1e-9  # the neighbour stays the closest atom


def test_emt_rises_all_the_way_and_a_hole_does_not() -> None:
    _, frames = pushed_pair_path(_crystal(), SETTINGS)
    assert rise_fraction(_energies(EMT, frames)) == 1.0
    holed = rise_fraction(_energies(EMTWithShortRangeHole, frames))
    assert 0.5 < holed < 1.0  # the steps below the barrier fall: a graded violation


def test_a_non_finite_energy_is_no_rise() -> None:
    assert rise_fraction(np.array([0.0, 1.0, math.nan, 3.0])) == 0.0
    assert rise_fraction(np.array([0.0, 1.0, 0.5, 3.0])) == pytest.approx(2 / 3)


def test_an_atom_out_of_range_is_named() -> None:
    with pytest.raises(Exception, match="short_range: atom 40 out of range"):
        pushed_pair_path(_crystal(), ShortRangeSettings(atom=40, from_A=2.3, to_A=1.2))


def _spec(**extra: object) -> dict:
    return {
        "name": "t",
        "version": 2,
        "md": MINIMAL_MD,
        "throughput": {"md_steps": 5},
        "constraints": [
            {"metric": "short_range_rise_fraction", "min": 1.0, "unit": "fraction"},
        ],
        "composite_weights": {"short_range_rise_fraction": 1.0},
        **extra,
    }


def test_the_spec_needs_the_probe_it_constrains_and_a_push_inwards() -> None:
    with pytest.raises(ValidationError, match="needs a 'short_range' section"):
        ScorecardSpec.model_validate(_spec())
    with pytest.raises(ValidationError, match=r"to_A 2\.5 must be below from_A 2\.3"):
        ScorecardSpec.model_validate(_spec(short_range={"from_A": 2.3, "to_A": 2.5}))
    spec = ScorecardSpec.model_validate(_spec(short_range={"from_A": 2.3, "to_A": 1.2}))
    assert spec.short_range == SETTINGS
