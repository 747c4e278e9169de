"""Recipe -> ``mace_run_train`` command-line flags: the one place that knows MACE's flag names."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from mlipilot.data.extxyz import ENERGY_KEY, FORCES_KEY, STRESS_KEY
from mlipilot.recipe import Recipe

MODEL_NAME = "candidate"


VALID_FRACTION = 0.1  # of the train split, held out by mace_run_train for its validation


def frames_trained_on(n_train: int, valid_fraction: float = VALID_FRACTION) -> int:
    """The frames mace trains on, after it holds out its validation frames (as
    ``mace.data.utils.random_train_valid_split`` computes it)."""
    return max(0, min(n_train - int(valid_fraction * n_train), n_train - 1))


def batch_fits(recipe: Recipe, n_train: int) -> str | None:
    """Why the recipe's batch cannot train on ``n_train`` frames, or None when it can.

    mace drops the last incomplete batch of an epoch: a batch larger than the frames it trains
    on leaves no batch at all, and mace fails deep inside (``torch.cat(): expected a non-empty
    list``) after spending the start-up.
    """
    usable = frames_trained_on(n_train)
    if recipe.batch_size <= usable:
        return None
    return (
        f"batch_size {recipe.batch_size} is larger than the {usable} frames mace trains on here "
        f"({n_train} train frames, {VALID_FRACTION:.0%} held out for validation): mace drops "
        f"the incomplete batch, so none would be left; use batch_size <= {usable}"
    )


def stress_fits(recipe: Recipe, stress_labelled: bool) -> str | None:
    """Why the recipe's loss cannot train on data without stress labels, or None when it can.

    mace fills a missing stress with zeros at weight zero: ``loss=stress`` on molecules would
    quietly train as ``weighted`` under another name.
    """
    if recipe.loss != "stress" or stress_labelled:
        return None
    return (
        f"loss=stress trains on stress labels ({STRESS_KEY} on every frame, as periodic cells "
        "have) and this training data has none; use loss=weighted"
    )


def untrainable(recipe: Recipe, n_train: int, stress_labelled: bool) -> str | None:
    """Why ``recipe`` cannot train on this data (``batch_fits``, ``stress_fits``), or None."""
    return batch_fits(recipe, n_train) or stress_fits(recipe, stress_labelled)


def to_mace_args(
    recipe: Recipe,
    *,
    train_file: Path,
    work_dir: Path,
    epochs: int,
    atomic_numbers: Sequence[int],
    valid_fraction: float = VALID_FRACTION,
    device: str = "cpu",
) -> list[str]:
    """Flags for one training run under a fixed epoch budget.

    The test split is never passed: the trainer only sees training data (the scorecard owns
    the held-out set).
    """
    r = recipe
    if r.e0s == "zero":
        e0s = "{" + ", ".join(f"{z}: 0.0" for z in sorted(set(atomic_numbers))) + "}"
    else:
        e0s = "average"
    args = {
        "name": MODEL_NAME,
        "work_dir": str(work_dir),
        "train_file": str(train_file),
        "valid_fraction": valid_fraction,
        "energy_key": ENERGY_KEY,
        "forces_key": FORCES_KEY,
        "stress_key": STRESS_KEY,
        "model": "MACE",
        "E0s": e0s,
        "scaling": r.scaling,
        "loss": r.loss,
        "energy_weight": r.energy_weight,
        "forces_weight": r.forces_weight,
        "lr": r.lr,
        "scheduler": "ReduceLROnPlateau",
        "scheduler_patience": r.scheduler_patience,
        "lr_factor": r.lr_factor,
        "num_channels": r.num_channels,
        "max_L": r.max_L,
        "correlation": r.correlation,
        "num_interactions": r.num_interactions,
        "r_max": r.r_max,
        "num_radial_basis": r.num_radial_basis,
        "batch_size": r.batch_size,
        "valid_batch_size": max(r.batch_size, 8),
        "default_dtype": r.default_dtype,
        "seed": r.seed,
        "max_num_epochs": epochs,
        # Early stopping would make the budget unequal between candidates.
        "patience": epochs + 1,
        "eval_interval": 1,
        "device": device,
        "num_workers": 0,
        "error_table": "PerAtomMAE",
    }
    flags = [f"--{key}={value}" for key, value in args.items()]
    if r.loss == "huber":  # the other losses never read it: left out, it keys no new training
        flags.append(f"--huber_delta={r.huber_delta}")
    if r.loss == "stress":  # the other losses never read them: left out, they key no new training
        flags.append(f"--stress_weight={r.stress_weight}")
    if r.ema:
        flags += ["--ema", f"--ema_decay={r.ema_decay}"]
    # Stage two needs at least one epoch before it; with a 1-epoch budget it cannot happen.
    if r.stage_two and epochs >= 2:
        start = min(epochs - 1, max(1, round(r.stage_two_start * epochs)))
        flags += [
            "--stage_two",
            f"--start_stage_two={start}",
            f"--stage_two_energy_weight={r.stage_two_energy_weight}",
            f"--stage_two_forces_weight={r.stage_two_forces_weight}",
            f"--stage_two_lr={r.stage_two_lr}",
        ]
        if r.loss == "stress":
            flags.append(f"--stage_two_stress_weight={r.stage_two_stress_weight}")
    if r.pair_repulsion:
        flags.append("--pair_repulsion")
    return flags


def training_key(recipe: Recipe, epochs: int) -> str:
    """Digest of what training actually does with ``recipe``.

    Two recipes with the same key train the same model (deterministic seed, same flags): for
    example two that differ only in stage-two settings while stage two is off. A campaign
    answers such a duplicate from its ledger instead of training it again.
    """
    flags = to_mace_args(
        recipe, train_file=Path("TRAIN"), work_dir=Path("WORK"), epochs=epochs, atomic_numbers=[0]
    )
    return hashlib.sha256("\n".join(flags).encode()).hexdigest()
