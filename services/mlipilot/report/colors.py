"""One colour per campaign, the same in every figure and view (static report, comparison,
dashboard): chosen from its run folder's name, not its place in a list, so it stays put when
another campaign is added beside it."""

from __future__ import annotations

import hashlib

PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
]  # fmt: skip


def campaign_color(run_id: str) -> str:
    digest = hashlib.sha256(run_id.encode()).digest()
    return PALETTE[digest[0] % len(PALETTE)]
