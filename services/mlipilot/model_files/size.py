"""How big a MACE model a configuration builds, estimated before anything is built.

A model file's configuration is data from outside (a candidate program, a caller of the
scorecard service). Building what it describes allocates every parameter and buffer at once,
so a crafted configuration (a hundred elements, 512 channels up to l=3) could take the host
process down before any weight is checked. ``estimated_size`` bounds the count of parameter
and buffer elements from the configuration alone, block by block as mace-torch builds them
(mace/modules/models.py), erring on the large side; a test keeps it within a small factor
above the real count for the models mace users train.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

from e3nn import o3

DEFAULT_RADIAL_MLP = (64, 64, 64)  # mace's default when radial_MLP is None


def coupling_paths(l_max: int, nu: int, l_out: int, *, doubled: bool) -> int:
    """Upper bound on the basis size of the symmetric contraction: how often irrep ``l_out``
    occurs in the ``nu``-fold product of the node features' irreps (l = 0..l_max; both
    parities when ``doubled``), counted from the m-weights with parity ignored."""
    weights: Counter[int] = Counter()
    for ell in range(l_max + 1):
        for m in range(-ell, ell + 1):
            weights[m] += 2 if doubled else 1
    total: Counter[int] = Counter({0: 1})
    for _ in range(nu):
        step: Counter[int] = Counter()
        for m1, c1 in total.items():
            for m2, c2 in weights.items():
                step[m1 + m2] += c1 * c2
        total = step
    return max(0, total[l_out] - total[l_out + 1])


def estimated_size(kwargs: dict[str, Any]) -> int:
    """Parameters plus buffers (in elements) of ``ScaleShiftMACE(**kwargs)``, an overestimate.

    ``kwargs`` are converted constructor arguments (irreps as ``o3.Irreps``), already checked
    one by one against the allow-list's per-key limits.
    """
    hidden: o3.Irreps = kwargs["hidden_irreps"]
    elements = int(kwargs["num_elements"])
    l_max = int(kwargs["max_ell"])
    interactions = int(kwargs["num_interactions"])
    correlation = kwargs["correlation"]
    corrs = correlation if isinstance(correlation, list) else [correlation] * interactions
    radial = list(kwargs.get("radial_MLP") or DEFAULT_RADIAL_MLP)
    heads = len(kwargs.get("heads") or ["Default"])
    mlp = kwargs["MLP_irreps"].dim * heads
    scalars = max(1, hidden.count(o3.Irrep(0, 1)))
    widest = max([mul for mul, _ in hidden] + [scalars])
    doubled = hidden.count(o3.Irrep(0, -1)) > 0 or bool(kwargs.get("use_so3"))
    feature_dim = (l_max + 1) ** 2 * (2 if doubled else 1)  # per channel, into the product
    n_feature_irreps = (l_max + 1) * (2 if doubled else 1)

    size = elements * scalars + elements * heads  # embedding, atomic energies
    size += int(kwargs["num_bessel"]) * 4 + 16  # radial basis and cutoff buffers
    for i in range(interactions):
        inputs = [(scalars, 0)] if i == 0 else [(mul, ir.l) for mul, ir in hidden]
        outputs = [(scalars, 0)] if i == interactions - 1 else [(m, ir.l) for m, ir in hidden]
        block = kwargs["interaction_cls_first" if i == 0 else "interaction_cls"]
        # Attention blocks carry a second and third network of the convolution's size.
        times = 3 if "Att" in getattr(block, "__name__", "") else 1
        size += times * _interaction(
            inputs, n_feature_irreps, scalars, l_max, elements, radial, kwargs
        )
        size += _product(outputs, corrs[i], l_max, doubled, feature_dim, elements, scalars)
    size += widest * heads * interactions + scalars * mlp + mlp * heads  # readouts
    return size


def _interaction(
    inputs: Sequence[tuple[int, int]],
    n_feature_irreps: int,
    scalars: int,
    l_max: int,
    elements: int,
    radial: list[int],
    kwargs: dict[str, Any],
) -> int:
    """linear_up, the radial MLP, the convolution's paths, linear and skip_tp (the only part
    that grows with the element count times channels squared)."""
    paths = len(inputs) * (l_max + 1) * n_feature_irreps
    mul_in = max(mul for mul, _ in inputs)
    widths = [int(kwargs["num_bessel"]), *radial]
    mlp = sum(a * b for a, b in itertools.pairwise(widths)) + widths[-1] * paths * mul_in
    linear_up = sum(mul * mul for mul, _ in inputs)
    linear = paths * mul_in * scalars
    skip = elements * n_feature_irreps * mul_in * scalars
    edge = kwargs.get("edge_irreps")
    extra = 0 if edge is None else 4 * edge.dim * max(edge.dim, mul_in) * n_feature_irreps
    # Density and attention blocks add a radial network of the same shape at most once more.
    return linear_up + 2 * mlp + linear + skip + extra + paths * 2 * mul_in


def _product(
    outputs: Sequence[tuple[int, int]],
    correlation: int,
    l_max: int,
    doubled: bool,
    feature_dim: int,
    elements: int,
    scalars: int,
) -> int:
    """The symmetric contraction's weights (per element) and U matrices (buffers), and its
    linear layer."""
    size = 0
    for mul, l_out in outputs:
        for nu in range(1, correlation + 1):
            paths = coupling_paths(l_max, nu, l_out, doubled=doubled)
            size += elements * paths * scalars  # weights
            size += feature_dim**nu * paths * (2 * l_out + 1)  # U matrix
        size += mul * mul
    return size
