"""MD stability replicas as parallel Ray tasks.

With the batched engine (``md.engine: batched``) the replicas are split into as many groups as
the cluster can run at once, and each group runs as one task that batches its replicas (and
splits them again if its device's memory asks for it). With the ASE reference engine each
replica is its own task. A task loads the model from the shared folder and writes its traces
there; only start frames go out and small outcomes come back. A caller whose folders the
workers cannot see (the scorecard service, in its own pod) ships instead: the model goes out
as bytes (once, through the object store) and each trace comes back as bytes.
"""

from __future__ import annotations

import math
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from mlipilot import ray_runtime
from mlipilot.config import RayResources
from mlipilot.ray_runtime import sized
from mlipilot.scoring.md_stability import MD_ENGINES, ReplicaJob, ReplicaOutcome
from mlipilot.scoring.spec import MDSettings

# A GPU runs a few tens of thousands of atoms per model call about as fast as a few hundred:
# replicas go to another GPU task only beyond this many atoms (the task splits further by its
# own free memory).
GPU_TASK_ATOMS = 50_000


def _task_setup(threads: int) -> str:
    import torch

    torch.set_num_threads(threads)  # threads beyond the task's CPUs would only fight
    return "cuda" if ray.get_gpu_ids() else "cpu"  # the model follows what Ray gave us


@ray.remote
def _md_task(
    model_path: str, jobs: list[ReplicaJob], settings: MDSettings, threads: int
) -> list[ReplicaOutcome]:
    device = _task_setup(threads)
    engine = MD_ENGINES[settings.engine]
    return engine.run(Path(model_path), jobs, settings, lambda n: None, device)


@ray.remote
def _md_task_shipped(
    model: bytes, jobs: list[ReplicaJob], settings: MDSettings, threads: int
) -> tuple[list[ReplicaOutcome], list[bytes | None]]:
    """``_md_task`` on a worker that shares no folder with the caller: the model arrives as
    bytes, the traces are written in a folder of its own and go back as bytes."""
    device = _task_setup(threads)
    engine = MD_ENGINES[settings.engine]
    with tempfile.TemporaryDirectory(prefix="mlipilot-md-") as tmp:
        model_path = Path(tmp) / "model-package.pt"
        model_path.write_bytes(model)
        # One folder per replica: each trace keeps its own name (outcomes record it).
        here = [
            replace(job, trace_path=Path(tmp) / str(i) / job.trace_path.name)
            for i, job in enumerate(jobs)
        ]
        for job in here:
            job.trace_path.parent.mkdir()
        outcomes = engine.run(model_path, here, settings, lambda n: None, device)
        traces = [job.trace_path.read_bytes() if job.trace_path.is_file() else None for job in here]
    return outcomes, traces


def task_groups(atoms_per_job: list[int], slots: int, gpu: bool) -> list[list[int]]:
    """Split jobs (by index) into balanced consecutive groups, one Ray task each.

    On CPU, cores are what runs in parallel and a batch of a few replicas per core already gets
    most of batching's gain: one group per free slot. On GPU one device batches thousands of
    atoms at the cost of a few: a new group only per ``GPU_TASK_ATOMS``.
    """
    n = len(atoms_per_job)
    wanted = math.ceil(sum(atoms_per_job) / GPU_TASK_ATOMS) if gpu else n
    groups = max(1, min(n, slots, wanted))
    bounds = [i * n // groups for i in range(groups + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(groups)]


def _slots(resources: RayResources) -> int:
    """How many MD tasks of this size the cluster can run at once (at least one)."""
    total = ray.cluster_resources()
    if resources.gpus > 0:
        return max(1, int(total.get("GPU", 0) // resources.gpus))
    if resources.num_cpus > 0:
        return max(1, int(total.get("CPU", 0) // resources.num_cpus))
    return 1_000_000  # asks for nothing: as many tasks as there are replicas


class RayReplicaRunner:
    """A ``ReplicaRunner`` that fans replicas out to the Ray cluster. ``ship``: the workers
    share no folder with this process; the model goes to them and the traces come back.
    ``connect``: the cluster's address, joined at the first call rather than by the caller (a
    server that starts before its Ray head must still start, and serve its health)."""

    def __init__(
        self, resources: RayResources, ship: bool = False, connect: str | None = None
    ) -> None:
        self.resources = resources
        self.ship = ship
        self.connect = connect
        self._joined = False
        self._join_lock = threading.Lock()

    def _join(self) -> None:
        with self._join_lock:
            if self.connect is not None and not self._joined:
                ray_runtime.acquire(self.connect)  # held for the life of the process
                self._joined = True

    def __call__(
        self,
        model_path: Path,
        jobs: list[ReplicaJob],
        settings: MDSettings,
        on_steps: Callable[[int], None],
    ) -> list[ReplicaOutcome]:
        self._join()
        res = sized(self.resources)
        threads = max(1, int(res.num_cpus))
        per_replica = settings.nvt_steps + settings.nve_steps
        options = {"num_cpus": res.num_cpus, "num_gpus": res.gpus}
        if MD_ENGINES[settings.engine].batches:
            groups = task_groups([len(j.frame) for j in jobs], _slots(res), res.gpus > 0)
        else:  # one replica per task: as many run at once as the cluster has slots
            groups = [[i] for i in range(len(jobs))]
        refs: list[ray.ObjectRef[Any]]  # outcomes, or (outcomes, traces) when shipped
        if self.ship:  # the model's bytes, put once in the object store for every task
            shipped = _md_task_shipped.options(**options)
            model = ray.put(Path(model_path).read_bytes())
            refs = [shipped.remote(model, [jobs[i] for i in g], settings, threads) for g in groups]
        else:
            task = _md_task.options(**options)
            refs = [
                task.remote(str(model_path), [jobs[i] for i in g], settings, threads)
                for g in groups
            ]
        sizes = [len(g) for g in groups]
        replicas_of = dict(zip(refs, sizes, strict=True))
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in ready:
                    on_steps(per_replica * replicas_of[ref])  # may raise: the finally cancels
            results = ray.get(refs)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
        if not self.ship:
            return [outcome for group in results for outcome in group]
        outcomes = []
        for g, (group, traces) in zip(groups, results, strict=True):
            outcomes += group
            for i, trace in zip(g, traces, strict=True):
                if trace is not None:
                    jobs[i].trace_path.parent.mkdir(parents=True, exist_ok=True)
                    jobs[i].trace_path.write_bytes(trace)
        return outcomes
