"""What tests build: scorecard specs, tiny real campaigns, MACE models by hand.

One module (on pytest's ``pythonpath``: ``from factories import ...``) so a test's fixtures are
found in one place. torch and mace are imported inside the functions that need them: unit
tests that only want a spec do not pay for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import yaml
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

from mlipilot.model_files import read_package
from mlipilot.model_files.config import config_document
from mlipilot.model_files.package import write_checked_package
from mlipilot.scoring.spec import ScorecardSpec

if TYPE_CHECKING:
    from mace import modules


# -- scorecard specs for unit tests: the constraints vary, the MD block never matters --

MINIMAL_MD = {
    "start_frames": [0],
    "temperatures_K": [300.0],
    "seeds": [0],
    "nvt_steps": 10,
    "nve_steps": 0,
    "timestep_fs": 2.0,
    "friction_per_fs": 0.01,
    "min_distance_A": 1.5,
    "max_temperature_factor": 3.0,
    "max_energy_drift_meV_per_atom_per_ps": 5.0,
}


def make_spec(
    name: str, constraints: list[dict[str, Any]], weights: dict[str, float]
) -> ScorecardSpec:
    return ScorecardSpec.model_validate(
        {
            "name": name,
            "version": 1,
            "md": MINIMAL_MD,
            "throughput": {"md_steps": 5},
            "constraints": constraints,
            "composite_weights": weights,
        }
    )


# -- tiny real campaigns: short MD and loose thresholds, an untuned (infeasible) baseline --

# The smallest job for the code-mode training program (its job keys): trains in seconds.
TINY_PROGRAM_JOB: dict[str, Any] = {
    "epochs": 2,
    "num_channels": 8,
    "correlation": 2,
    "num_interactions": 1,
    "r_max": 3.5,
    "num_radial_basis": 4,
    "batch_size": 2,
}


def tiny_spec(md_seeds: tuple[int, ...] = (0, 1)) -> dict[str, Any]:
    return {
        "name": "cu-emt-tiny",
        "version": 1,
        "md": {
            "start_frames": [0],
            "temperatures_K": [600],
            "seeds": list(md_seeds),
            "nvt_steps": 30,
            "nve_steps": 10,
            "timestep_fs": 2.0,
            "friction_per_fs": 0.01,
            "min_distance_A": 1.8,
            "max_temperature_factor": 2.5,
            "max_energy_drift_meV_per_atom_per_ps": 200.0,
            "trace_every": 5,
        },
        "throughput": {"md_steps": 5, "repeats": 1},
        "constraints": [
            {"metric": "energy_mae_meV_per_atom", "max": 40.0, "unit": "meV/atom"},
            {"metric": "force_mae_meV_per_A", "max": 150.0, "unit": "meV/Å"},
            {"metric": "md_survival_fraction", "min": 1.0, "unit": "fraction"},
            {"metric": "relative_throughput", "min": 0.05, "unit": "x baseline"},
        ],
        "composite_weights": {"energy_mae_meV_per_atom": 1.0, "force_mae_meV_per_A": 1.0},
    }


TINY_SPEC = tiny_spec()

BAD_BASELINE = {
    "e0s": "zero",
    "scaling": "no_scaling",
    "energy_weight": 1.0,
    "forces_weight": 1.0,
    "lr": 0.001,
    "num_channels": 8,
    "num_interactions": 1,
    "correlation": 2,
    "r_max": 4.0,
    "batch_size": 4,
}


def write_tiny_campaign(
    folder: Path,
    *,
    name: str,
    data_path: str | Path = "data",
    agent: str = "rule-based",
    n_train: int = 16,
    spec: dict[str, Any] = TINY_SPEC,
    **budget: object,
) -> Path:
    """Write ``folder/spec.yaml`` and ``folder/<name>.yaml``; return the campaign file."""
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    campaign = {
        "name": name,
        "data": {
            "kind": "cu-emt",
            "path": str(data_path),
            "seed": 0,
            "n_train": n_train,
            "n_test": 8,
        },
        "scorecard": "spec.yaml",
        "baseline": BAD_BASELINE,
        "agent": {"kind": agent},
        "budget": {"iterations": 2, "epochs": 3, "max_train_seconds": 300, **budget},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(campaign))
    return path


def run_cli(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    """``mlipilot ARGS`` as a subprocess; ``kill_at``: a ``MLIPILOT_KILL_AT`` point where it
    SIGKILLs itself (mlipilot/faults.py), for a real ``kill -9`` of the driver."""
    env = {k: v for k, v in os.environ.items() if k != "MLIPILOT_KILL_AT"}
    if kill_at:
        env["MLIPILOT_KILL_AT"] = kill_at
    command = [sys.executable, "-m", "mlipilot.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


# -- untrained MACE models built by hand: a real model, no training ------------------------


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
    import numpy as np
    import torch
    from e3nn import o3  # after mace, which sets how torch.load treats e3nn's constants
    from mace import modules

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


# -- trained models made bad on purpose: unstable or broken potentials -------------------


def scaled_model(model_path: Path, factor: float, out: Path) -> Path:
    """The model with its energy scale multiplied: negative flips every force, NaN breaks it.

    The configuration keeps the old scale (it must be finite); the state dict, which is what
    the model runs with, carries the new one."""
    model = read_package(model_path)
    config = json.dumps(config_document(model), sort_keys=True)
    model.scale_shift.scale *= factor
    return write_checked_package(config, model.state_dict(), out)


# --- ledger events of a campaign, as the loop writes them -------------------------------------


def dashboard_events(
    campaign: str, hypothesis: str = "raise the learning rate"
) -> tuple[list[Any], list[Any], list[Any]]:
    """(start, the baseline's rows, one more candidate's rows) of a small Cu campaign, with the
    columns and details the loop writes (``campaign/recorder.py``); scores made up."""
    from mlipilot.ledger import LedgerEvent
    from mlipilot.recipe import Recipe

    def row(**fields: Any) -> LedgerEvent:
        return LedgerEvent(campaign=campaign, **fields)

    base = Recipe(lr=0.001)
    tried = Recipe(lr=0.01)
    start = [
        row(
            event="campaign_started",
            agent="rule-based",
            recipe=base.model_dump(),
            detail={"campaign": {"name": "cu-live", "budget": {"iterations": 3, "epochs": 2}}},
        )
    ]

    def candidate(iteration: int, name: str, recipe: Recipe, text: str, verdict: str, score: float):
        metrics = {"energy_mae_meV_per_atom": 50.0 * score, "force_mae_meV_per_A": 80.0 * score}
        return [
            row(event="iteration_started", iteration=iteration),
            row(
                event="proposal",
                iteration=iteration,
                candidate=name,
                agent="rule-based",
                hypothesis=text,
                patch=None if iteration == 0 else {"lr": recipe.lr},
                recipe=recipe.model_dump(),
            ),
            row(
                event="progress",
                iteration=iteration,
                candidate=name,
                status="train",
                detail={"stage": "train", "done": 1, "total": 2, "loss": 1.0},
            ),
            row(
                event="training",
                iteration=iteration,
                candidate=name,
                status="ok",
                detail={"curve": [{"epoch": 0, "loss": 2.0}, {"epoch": 1, "loss": 1.0}]},
            ),
            row(
                event="evaluation",
                iteration=iteration,
                candidate=name,
                status="infeasible",
                metrics=metrics,
                feasible=False,
                violation=score,
                composite=score,
            ),
            row(
                event="decision",
                iteration=iteration,
                candidate=name,
                agent="rule-based",
                hypothesis=text,
                decision=verdict,
                reason=f"{verdict.lower()} by the test",
                metrics=metrics,
                feasible=False,
                violation=score,
                composite=score,
            ),
        ]

    baseline = candidate(
        0, "it000", base, "baseline recipe from the campaign file", "BASELINE", 2.0
    )
    later = candidate(1, "it001", tried, hypothesis, "ACCEPT", 1.0)
    return start, baseline, later


@contextmanager
def serve_dashboard(runs: Path, token: str | None) -> Iterator[str]:
    """The dashboard over ``runs`` in a thread of this process, on a free loopback port; yields
    its base URL."""
    from mlipilot.dashboard.server import start_in_thread

    running = start_in_thread(runs, "127.0.0.1", 0, token, tick_s=0.2)
    try:
        yield f"http://127.0.0.1:{running.port}"
    finally:
        running.stop()


# -- a calculator wrong in one known way (validation and the scorecard's short-range probe) --

# The hand-made defect: EMT plus V(r) = -WELL_K (WELL_RC - r)³ for pairs closer than WELL_RC.
# Chosen by measuring EMT in the suite: its heating ramp (seed 0) comes no closer than 1.92 Å
# (1.86-1.94 Å over six seeds), NVE at 1000 K and every static geometry stay above 2.2 Å, so a
# term confined below 1.8 Å never acts there and leaves those values bit for bit EMT's. Along
# the pushed-atom path EMT's repulsion dE/dd is -26 eV/Å at 1.65 Å and -121 eV/Å at 1.2 Å;
# V'(r) = 3 K (RC - r)² outgrows it below ~1.55 Å once K > 112 eV/Å³ (at 1.2 Å), so K = 200
# turns EMT's monotonic rise into a barrier over a hole: one spurious extremum. Its forces are
# the energy's exact gradient and V''' = 6K keeps the trapezoid test far below its bound.
WELL_K, WELL_RC = 200.0, 1.8


class EMTWithShortRangeHole(EMT):
    """EMT plus a short-range spurious attraction: a "hole" below WELL_RC."""

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        i, d, vec = neighbor_list("idD", self.atoms, WELL_RC)  # vec = r_j - r_i, both orders
        extra = -WELL_K * float(np.sum((WELL_RC - d) ** 3)) / 2
        forces = np.zeros((len(self.atoms), 3))  # on i: V'(r) (r_j - r_i) / r
        np.add.at(forces, i, (3 * WELL_K * (WELL_RC - d) ** 2 / d)[:, None] * vec)
        energy = self.results["energy"] + extra
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": self.results["forces"] + forces,
        }
