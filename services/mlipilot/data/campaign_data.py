"""The data a campaign file's ``data:`` section names, opened or built on first use."""

from __future__ import annotations

from collections.abc import Callable

from mlipilot.config import CuEmtData, DataConfig
from mlipilot.data.dataset import Dataset, ensure_cu_emt


def ensure_campaign_data(
    data: DataConfig, progress: Callable[[str], None] | None = None
) -> Dataset:
    """Open the campaign's data set, building it from its settings when the folder is empty.

    Either way an existing folder made with other settings is refused, never overwritten.
    """
    if isinstance(data, CuEmtData):
        return ensure_cu_emt(
            data.path,
            seed=data.seed,
            n_train=data.n_train,
            n_test=data.n_test,
            extra_train={str(family): n for family, n in data.extra_train.items()},
        )
    # Imported on use: the molecular stack (RDKit, tblite, PySCF) is not needed for Cu.
    from mlipilot.data.molecules.qm7 import ensure_qm7

    built = ensure_qm7(
        data.path,
        molecules=data.molecules,
        level=data.level,
        configs_per_molecule=data.configs_per_molecule,
        seed=data.seed,
        test_fraction=data.test_fraction,
        progress=progress,
    )
    return built.dataset
