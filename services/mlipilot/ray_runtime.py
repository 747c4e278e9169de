"""Connecting to Ray: a local instance started here, or a running cluster.

Imported only when a campaign uses Ray, so ``mlipilot run`` with one candidate per iteration
never pays Ray's start-up.
"""

from __future__ import annotations

import logging

from mlipilot.errors import MlipilotError

NAMESPACE = "mlipilot"


def connect(address: str | None) -> bool:
    """Make Ray ready in this process; True when this call started it (the caller shuts it
    down). ``None`` or ``"local"`` starts a local instance; anything else is ``ray.init``'s
    address (``auto``, ``ray://host:10001``, ``host:6379``)."""
    import ray

    if ray.is_initialized():  # e.g. a test session, or a driver that set Ray up itself
        return False
    options = {"namespace": NAMESPACE, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address in (None, "local"):
            ray.init(include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise MlipilotError(
            f"compute.ray_address: cannot connect to Ray at {address}: {exc}"
        ) from exc
    return True


def shutdown() -> None:
    import ray

    ray.shutdown()
