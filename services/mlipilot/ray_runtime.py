"""Connecting to Ray: a local instance started here, or a running cluster.

Imported only when a campaign uses Ray, so ``mlipilot run`` with one candidate per iteration
never pays Ray's start-up. Campaigns sharing one process (the orchestrator service) share its
Ray connection: it is counted, and a local instance this module started is shut down when the
last campaign using it ends. One Ray started by someone else (a test session, a driver script)
is used and left alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mlipilot.errors import MlipilotError

if TYPE_CHECKING:
    from mlipilot.config import RayResources

NAMESPACE = "mlipilot"
CONNECT_TRIES = 3  # a running cluster's address: tries before a campaign fails
log = logging.getLogger(__name__)

_lock = threading.Lock()
_users = 0
_started_here = False


def acquire(address: str | None) -> None:
    """Make Ray ready in this process for one more campaign.

    ``None`` or ``"local"`` starts a local instance; anything else is ``ray.init``'s address
    (``auto``, ``ray://host:10001``, ``host:6379``). Pair every call with ``release()``.
    """
    global _users, _started_here
    import ray

    with _lock:
        if not ray.is_initialized():
            options = {
                "namespace": NAMESPACE,
                "log_to_driver": False,
                "logging_level": logging.WARNING,
            }
            if address in (None, "local"):
                _init(lambda: ray.init(include_dashboard=False, **options), address, tries=1)
            else:
                _init(lambda: ray.init(address=address, **options), address, CONNECT_TRIES)
            _started_here = True
        _users += 1


def _init(
    init: Callable[[], object],
    address: str | None,
    tries: int,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """``init()``, tried again after a pause when a cluster does not answer: a Ray head's
    client server has been seen to fail once under load and serve the next attempt."""
    import ray

    for attempt in range(1, tries + 1):
        try:
            init()
            return
        except (ConnectionError, RuntimeError, ValueError) as exc:
            if ray.is_initialized():
                ray.shutdown()
            if attempt == tries:
                raise MlipilotError(
                    f"compute.ray_address: cannot connect to Ray at {address}: {exc}"
                    + (f" ({tries} tries)" if tries > 1 else "")
                ) from exc
            log.warning("Ray at %s: %s; trying again in %d s", address, exc, 5 * attempt)
            sleep(5 * attempt)


def release() -> None:
    """One campaign is done with Ray; the last one shuts down a Ray started here."""
    global _users, _started_here
    import ray

    with _lock:
        _users = max(0, _users - 1)
        if _users == 0 and _started_here:
            ray.shutdown()
            _started_here = False


def sized(resources: RayResources) -> RayResources:
    """``resources`` for the connected cluster: ``num_gpus: auto`` becomes one GPU a task when
    the cluster has GPUs (a GPU cluster uses them without being told), else none."""
    import ray

    return resources.resolved(ray.cluster_resources())
