"""MD stability replicas as parallel Ray tasks, one task per replica.

Each task loads the model from the shared folder, runs its replica and writes its trace there;
only the replica's start frame goes out and its small outcome comes back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ray

from mlipilot.config import RayResources
from mlipilot.scoring.md_stability import (
    ReplicaJob,
    ReplicaOutcome,
    load_md_calculator,
    run_replica,
)
from mlipilot.scoring.spec import MDSettings


@ray.remote
def _replica_task(model_path: str, job: ReplicaJob, settings: MDSettings) -> ReplicaOutcome:
    import torch

    torch.set_num_threads(1)  # one task per core: threads would only fight
    device = "cuda" if ray.get_gpu_ids() else "cpu"  # the model follows what Ray gave us
    calc = load_md_calculator(Path(model_path), device=device)
    return run_replica(calc, job, settings, lambda n: None)


class RayReplicaRunner:
    """A ``ReplicaRunner`` that fans replicas out to the Ray cluster."""

    def __init__(self, resources: RayResources) -> None:
        self.resources = resources

    def __call__(
        self,
        model_path: Path,
        jobs: list[ReplicaJob],
        settings: MDSettings,
        on_steps: Callable[[int], None],
    ) -> list[ReplicaOutcome]:
        task = _replica_task.options(
            num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus
        )
        refs = [task.remote(str(model_path), job, settings) for job in jobs]
        per_replica = settings.nvt_steps + settings.nve_steps
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for _ in ready:
                    on_steps(per_replica)  # may raise to stop: the finally cancels the rest
            return ray.get(refs)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
