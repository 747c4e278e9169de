"""Stability tests for isolated molecules: bond-length deviation and fragmentation.

Forces can be accurate on average while MD tears a molecule apart; Fu et al. ("Forces are not
enough", TMLR 2023) call a molecular trajectory unstable once any bond length deviates from its
reference by more than 0.5 Å. Here the bonds and their reference lengths come from the replica's
start frame (pairs closer than ``bond_factor`` times the sum of covalent radii), so any
molecular test split works without stored bond tables. A start frame is an off-equilibrium
sample, a few hundredths of an Å from equilibrium: small beside the 0.5 Å threshold.

Fragmentation is tested on its own: the molecule's bond graph, keeping only the start bonds
still shorter than ``fragment_factor`` times their covalent sum, splits into more pieces than
it started with. It names what happened when a molecule comes apart; the deviation test also
catches bonds squeezed, or twisted out of place without breaking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mlipilot.errors import MlipilotError
from mlipilot.scoring.spec import MolecularSettings


def _pieces(n_atoms: int, bonds: np.ndarray) -> int:
    if n_atoms == 0:
        return 0
    graph = coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), (n_atoms, n_atoms))
    return int(connected_components(graph, directed=False)[0])


@dataclass(frozen=True)
class MolecularCheck:
    """The bonds of one start frame, and the tests every later state of that replica faces."""

    settings: MolecularSettings
    bonds: np.ndarray  # [n_bonds, 2] atom indices, i < j
    reference_A: np.ndarray  # [n_bonds] start lengths
    fragment_at_A: np.ndarray  # [n_bonds] a bond longer than this is broken
    n_atoms: int
    start_pieces: int

    @classmethod
    def of(cls, frame: Atoms, settings: MolecularSettings, where: str) -> MolecularCheck:
        if frame.pbc.any():
            raise MlipilotError(
                f"{where}: md.molecular tests isolated molecules, but this start frame is "
                f"periodic (pbc={frame.pbc.tolist()}); drop md.molecular for periodic data"
            )
        pos = frame.positions
        radii = covalent_radii[frame.numbers]
        i, j = np.triu_indices(len(frame), k=1)
        lengths = np.linalg.norm(pos[j] - pos[i], axis=1)
        covalent = radii[i] + radii[j]
        bonded = lengths < settings.bond_factor * covalent
        bonds = np.stack([i[bonded], j[bonded]], axis=1)
        return cls(
            settings=settings,
            bonds=bonds,
            reference_A=lengths[bonded],
            fragment_at_A=settings.fragment_factor * covalent[bonded],
            n_atoms=len(frame),
            start_pieces=_pieces(len(frame), bonds),
        )

    def bond_lengths(self, positions: np.ndarray) -> np.ndarray:
        b = self.bonds
        return np.linalg.norm(positions[b[:, 1]] - positions[b[:, 0]], axis=1)

    def max_deviation_A(self, positions: np.ndarray) -> float:
        if not len(self.bonds):
            return 0.0
        return float(np.abs(self.bond_lengths(positions) - self.reference_A).max())

    def fragmented(self, positions: np.ndarray) -> bool:
        """More pieces than at the start, counting only bonds not yet stretched to breaking."""
        intact = self.bond_lengths(positions) < self.fragment_at_A
        return _pieces(self.n_atoms, self.bonds[intact]) > self.start_pieces
