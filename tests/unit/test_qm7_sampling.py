"""Normal-mode sampling of one molecule on GFN2-xTB (real tblite calls, well under a second)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from mlipilot.data.molecules.levels import Gfn2XtbLevel
from mlipilot.data.molecules.molecule_list import Molecule
from mlipilot.data.molecules.sampling import (
    SamplingSettings,
    hessian,
    normal_modes,
    relax,
    sample_configurations,
)
from mlipilot.data.molecules.xtb import Gfn2Xtb

ETHANOL = Molecule("m_eth", "CCO", 3)


def test_configurations_are_off_equilibrium_and_seeded() -> None:
    settings = SamplingSettings(configs_per_molecule=3)
    frames = sample_configurations(ETHANOL, 5, settings)
    again = sample_configurations(ETHANOL, 5, settings)
    other = sample_configurations(ETHANOL, 6, settings)
    assert [a.info["config_id"] for a in frames] == ["m_eth-c000", "m_eth-c001", "m_eth-c002"]
    assert [a.info["config_type"] for a in frames] == ["nms_300K", "nms_600K", "nms_1000K"]
    for a, b in zip(frames, again, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.allclose(frames[0].positions, other[0].positions)
    level = Gfn2XtbLevel()
    max_forces = [np.abs(level.label(a.numbers, a.positions)[1]).max() for a in frames]
    assert min(max_forces) > 0.3, f"forces near zero: {max_forces} eV/Å"
    assert max(max_forces) < 20.0, f"implausible forces: {max_forces} eV/Å"


@pytest.mark.parametrize(("smiles", "n_vib"), [("O", 3), ("C#N", 4), ("C", 9)])
def test_rigid_motions_are_removed(smiles: str, n_vib: int) -> None:
    # 3N-6 vibrations, 3N-5 for a linear molecule (HCN), all positive at a relaxed minimum.
    frame = sample_configurations(Molecule("x", smiles, 1), 0, SamplingSettings(1))[0]
    xtb = Gfn2Xtb(frame.numbers, frame.positions)
    eq = relax(frame.numbers, frame.positions, xtb, SamplingSettings())
    masses = Atoms(numbers=frame.numbers).get_masses()
    freqs2, modes = normal_modes(eq, masses, hessian(eq, xtb, 0.005))
    assert len(freqs2) == n_vib
    assert freqs2.min() > 0
    np.testing.assert_allclose(modes.T @ modes, np.eye(n_vib), atol=1e-10)


def test_xtb_forces_are_minus_the_energy_gradient() -> None:
    # Catches unit slips (Bohr vs Å, Hartree vs eV) in the tblite adapter.
    frame = sample_configurations(ETHANOL, 1, SamplingSettings(1))[0]
    xtb = Gfn2Xtb(frame.numbers, frame.positions)
    _, forces = xtb.energy_forces(frame.positions)
    h = 1e-4
    for atom, axis in [(0, 0), (2, 1), (5, 2)]:
        plus, minus = frame.positions.copy(), frame.positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = -(xtb.energy_forces(plus)[0] - xtb.energy_forces(minus)[0]) / (2 * h)
        assert forces[atom, axis] == pytest.approx(fd, abs=2e-3)
