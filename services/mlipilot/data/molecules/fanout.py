"""Run independent tasks serially, on a local process pool, or as Ray tasks.

Results come back to the caller one by one as they finish (``on_result``), so the caller can
write each to disk at once: a job killed midway keeps everything that finished. Task
functions must return their failures as values; an exception here is a bug and stops the job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, Literal, TypeVar

T = TypeVar("T")
R = TypeVar("R")
Backend = Literal["serial", "process", "ray"]
BACKENDS: tuple[str, ...] = ("serial", "process", "ray")


def run_tasks(
    fn: Callable[[T], R],
    items: Sequence[T],
    on_result: Callable[[int, R], None],
    *,
    backend: Backend = "serial",
    workers: int = 1,
    ray_address: str | None = None,
) -> None:
    if not items:
        return
    if backend == "serial":
        for i, item in enumerate(items):
            on_result(i, fn(item))
    elif backend == "process":
        _run_pool(fn, items, on_result, workers)
    elif backend == "ray":
        _run_ray(fn, items, on_result, ray_address)
    else:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


def _one_thread_per_worker() -> None:
    # Workers share the cores: OpenMP threads beyond one each would only fight (set before
    # PySCF or tblite load in this fresh interpreter).
    os.environ["OMP_NUM_THREADS"] = "1"


def _run_pool(
    fn: Callable[[T], R], items: Sequence[T], on_result: Callable[[int, R], None], workers: int
) -> None:
    # spawn, not fork: the parent may hold Ray or OpenMP threads that a fork would copy broken.
    with ProcessPoolExecutor(
        max_workers=max(1, workers),
        mp_context=get_context("spawn"),
        initializer=_one_thread_per_worker,
    ) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for fut in as_completed(futures):
                on_result(futures[fut], fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _run_ray(
    fn: Callable[[T], R],
    items: Sequence[T],
    on_result: Callable[[int, R], None],
    address: str | None,
) -> None:
    import ray

    from mlipilot import ray_runtime

    ray_runtime.acquire(address)
    try:
        remote: Any = ray.remote(num_cpus=1, max_retries=2)(fn)  # retries: a lost worker node
        pending = {remote.remote(item): i for i, item in enumerate(items)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    on_result(pending.pop(ref), ray.get(ref))
        except BaseException:
            for ref in pending:  # a cluster would otherwise go on computing for nobody
                ray.cancel(ref)
            raise
    finally:
        ray_runtime.release()
