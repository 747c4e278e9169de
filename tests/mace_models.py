"""Untrained MACE models built by hand, for tests that need a real model but no training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from mace import modules


def untrained_mace(
    atomic_numbers: Sequence[int],
    atomic_energies: Sequence[float],
    *,
    num_interactions: int = 1,
    max_ell: int = 1,
    hidden_irreps: str = "8x0e",
    mlp_irreps: str = "8x0e",
    avg_num_neighbors: float = 8.0,
    interaction_scale: float = 1.0,
    correlation: int = 2,
    seed: int = 0,
) -> modules.ScaleShiftMACE:
    """A ScaleShiftMACE (r_max 4 Å) with its initial weights from ``seed``.

    ``interaction_scale=0`` leaves only the atomic energies: no force between atoms.
    """
    from e3nn import o3  # after mace, which sets how torch.load treats e3nn's constants

    torch.manual_seed(seed)
    return modules.ScaleShiftMACE(
        r_max=4.0,
        num_bessel=6,
        num_polynomial_cutoff=5,
        max_ell=max_ell,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=num_interactions,
        num_elements=len(atomic_numbers),
        hidden_irreps=o3.Irreps(hidden_irreps),
        MLP_irreps=o3.Irreps(mlp_irreps),
        atomic_energies=np.array(atomic_energies, dtype=float),
        avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=list(atomic_numbers),
        correlation=correlation,
        gate=torch.nn.functional.silu,
        atomic_inter_scale=interaction_scale,
        atomic_inter_shift=0.0,
    )
