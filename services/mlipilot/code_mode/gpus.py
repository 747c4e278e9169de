"""The GPU device nodes a sandboxed program may use: those of the GPUs this process was given.

A program that trains on a GPU needs NVIDIA's control nodes (``nvidiactl``, ``nvidia-uvm``,
``nvidia-uvm-tools``; ``nvidia-modeset`` where it exists) and the node of each of its GPUs
(``nvidia<N>``). The sandbox binds exactly those into its minimal ``/dev`` and nothing else
of the host's. Which GPUs: the indices in ``CUDA_VISIBLE_DEVICES`` (Ray sets them for a task
or actor given GPUs); unset or not plain indices (UUIDs), every ``nvidia<N>`` present, which in
a Kubernetes pod are only the GPUs the device plugin gave it. The driver's libraries come
with ``/usr``, which the sandbox binds read-only anyway.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlipilot.errors import MlipilotError

CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
_GPU_NODE = re.compile(r"^nvidia(\d+)$")


def gpu_device_nodes(visible: str | None, dev: Path = Path("/dev")) -> list[Path]:
    """The device nodes to bind for the GPUs named by ``visible`` (CUDA_VISIBLE_DEVICES).

    MlipilotError when there is no GPU node to bind: the program asked for a GPU that this
    machine (or pod) does not have."""
    present = {int(m[1]): p for p in dev.glob("nvidia*") if (m := _GPU_NODE.match(p.name))}
    wanted = sorted(present)
    if visible is not None and re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*", visible):
        wanted = [int(i) for i in visible.split(",")]
        missing = [i for i in wanted if i not in present]
        if missing:
            raise MlipilotError(
                f"CUDA_VISIBLE_DEVICES={visible}: no {dev}/nvidia{missing[0]} to bind into the "
                "sandbox"
            )
    if not wanted:
        raise MlipilotError(f"no GPU device node ({dev}/nvidia<N>) to bind into the sandbox")
    control = [dev / name for name in CONTROL_NODES if (dev / name).exists()]
    return control + [present[i] for i in wanted]
