"""One real B3LYP/6-31G(d) label: analytic forces against central differences of energies."""

from __future__ import annotations

import numpy as np
import pytest

from mlipilot.data.molecules.levels import PyscfDftLevel, get_level
from mlipilot.data.molecules.molecule_list import Molecule
from mlipilot.data.molecules.sampling import SamplingSettings, sample_configurations

STEP = 1e-3  # Å
# Measured agreement ~5e-5 eV/Å (analytic gradients omit the grid response; density fitting
# is differentiated consistently); a units or sign slip would be off by eV/Å.
FORCE_TOLERANCE = 1e-3  # eV/Å


def test_b3lyp_forces_match_finite_differences() -> None:
    level = get_level("b3lyp/6-31g*")
    assert isinstance(level, PyscfDftLevel) and level.cart and level.xc == "b3lyp"
    # Water, the smallest molecule in the list, sampled off equilibrium at 1000 K.
    frame = sample_configurations(Molecule("w", "O", 1), 0, SamplingSettings(3))[2]
    energy, forces = level.label(frame.numbers, frame.positions)
    assert energy == pytest.approx(-76.4 * 27.2114, rel=2e-3)  # ~ -76.4 Ha for water
    # The three largest force components (a planar molecule has zero out-of-plane forces).
    largest = np.argsort(np.abs(forces).ravel())[-3:]
    assert np.abs(forces).ravel()[largest].min() > 0.2
    for flat in largest:
        atom, axis = divmod(int(flat), 3)
        plus, minus = frame.positions.copy(), frame.positions.copy()
        plus[atom, axis] += STEP
        minus[atom, axis] -= STEP
        e_plus = level.label(frame.numbers, plus)[0]
        e_minus = level.label(frame.numbers, minus)[0]
        fd = -(e_plus - e_minus) / (2 * STEP)
        assert forces[atom, axis] == pytest.approx(fd, abs=FORCE_TOLERANCE)
