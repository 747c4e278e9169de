"""A crystal suite's groups as parallel Ray tasks, like the scorecard's MD replicas.

Each group (equation of state, elastic constants, vacancy, surfaces, phonons, heating ramp,
NVE, smoothness) is one task: it loads the model package from the shared run folder (or makes
the EMT reference), runs the group, and sends back its values and curves, never a model. A task
takes the campaign's MD resources (``compute.md``), so on a GPU cluster each group runs on a GPU
of its own. The suite's groups are independent given the lattice constant a0, which is found
here first (a few dozen energies). Molecular suites run here, one group after another.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ray
from ase.calculators.emt import EMT

from mlipilot.config import RayResources
from mlipilot.ray_runtime import sized
from mlipilot.validation.result import CalculatorFactory, GroupRun
from mlipilot.validation.run import FanOuts, GroupFanOut, package_calculator, run_group
from mlipilot.validation.suite import ValidationSuite

EMT_SOURCE = "emt"  # the Cu reference: ASE's EMT, made in the task


def _factory(source: str, elements: Sequence[str], device: str) -> CalculatorFactory:
    if source == EMT_SOURCE:
        return EMT
    return package_calculator(Path(source), elements, device)


@ray.remote
def _group_task(
    source: str,
    elements: list[str],
    suite: ValidationSuite,
    name: str,
    a0: float | None,
    why_not: str,
    threads: int,
) -> GroupRun:
    import torch

    torch.set_num_threads(threads)  # threads beyond the task's CPUs would only fight
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    try:
        factory = _factory(source, elements, device)
    except Exception as exc:  # a package that will not load fails its group, as here
        return GroupRun(
            values={}, curves={}, notes=[], error=f"{type(exc).__name__}: {exc}", wall_s=0.0
        )
    return run_group(name, factory, suite, a0, why_not)


def fan_out(
    source: str, elements: Sequence[str], suite: ValidationSuite, resources: RayResources
) -> GroupFanOut:
    """Runs ``suite``'s groups for ``source`` (a package path, or ``EMT_SOURCE``) as Ray tasks,
    all submitted at once; the caller gets them back in the suite's order."""

    def run(names: list[str], a0: float | None, why_not: str) -> dict[str, GroupRun]:
        res = sized(resources)
        threads = max(1, int(res.num_cpus))
        options = {"num_cpus": res.num_cpus, "num_gpus": res.gpus}
        pending = {
            name: _group_task.options(**options).remote(
                source, list(elements), suite, name, a0, why_not, threads
            )
            for name in names
        }
        try:
            return {name: ray.get(ref) for name, ref in pending.items()}
        except BaseException:
            for ref in pending.values():  # a stop or a failure: nothing left running
                ray.cancel(ref, force=True)
            raise

    return run


def ray_fan_outs(
    package: Path, elements: Sequence[str], suite: ValidationSuite, resources: RayResources
) -> FanOuts:
    """The fan-outs ``validate`` takes: the model's groups from ``package``, the reference's
    (EMT) likewise, side by side on the cluster."""
    model = fan_out(str(package), elements, suite, resources)
    reference = fan_out(EMT_SOURCE, elements, suite, resources)
    return lambda who: model if who == "model" else reference
