"""Fixtures that build a real (tiny) MACE model for Cu from EMT labels.

Data and training come from the project's own generator and trainer (mace_run_train in a
subprocess, once per session), so the scoring stages are tested against a model file that
mace_run_train really wrote.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from ase import Atoms
from service_stack import ServiceStack, start_stack

from mlipilot.data.dataset import Dataset, ensure_cu_emt
from mlipilot.recipe import Recipe
from mlipilot.training.trainer import TrainingBudget, train_recipe


@pytest.fixture(scope="session")
def cu_data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A small Cu EMT data set made by the project's own generator."""
    return ensure_cu_emt(tmp_path_factory.mktemp("cu_data"), seed=7, n_train=40, n_test=8)


@pytest.fixture(scope="session")
def cu_test_frames(cu_data: Dataset) -> list[Atoms]:
    return cu_data.load("test")


@pytest.fixture(scope="session")
def tiny_cu_model(tmp_path_factory: pytest.TempPathFactory, cu_data: Dataset) -> Path:
    """A 16-channel MACE trained for 15 epochs by the campaign's own trainer."""
    recipe = Recipe(num_channels=16, r_max=4.5, num_interactions=2, lr=0.01, batch_size=5)
    outcome = train_recipe(
        recipe,
        train_file=cu_data.path("train"),
        atomic_numbers=[29],
        work_dir=tmp_path_factory.mktemp("tiny_cu_model"),
        budget=TrainingBudget(epochs=15, max_seconds=600),
        # One thread: on a shared 2-core machine, 2-thread torch next to other busy processes
        # was measured 10-60x slower per epoch; one thread costs ~1.5x on an idle machine.
        threads=1,
    )
    if outcome.model_path is None:
        pytest.fail(f"training failed: {outcome.cause}; see {outcome.log_path}")
    return outcome.model_path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    """The orchestrator and scorecard services on loopback ports, one pair per test module."""
    running = start_stack(tmp_path_factory.mktemp("services"))
    yield running
    running.stop()


def loopback_only() -> bool:
    """True inside a network namespace whose only interface is lo (asked of the kernel, not of
    /sys/class/net, which shows the namespace /sys was mounted in: `make test` enters only the
    network namespace, so /sys and its cgroups stay the host's)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance for the whole test run (its start-up costs seconds).

    Ray binds the machine's outside address even when told 127.0.0.1, so these tests run only
    in a loopback-only network namespace (``make test`` makes one); elsewhere they skip, or
    fail when MLIPILOT_REQUIRE_RAY_TESTS is set, so CI cannot skip them silently.
    """
    if not loopback_only():
        reason = "Ray tests need a loopback-only network namespace (run them with `make test`)"
        if os.environ.get("MLIPILOT_REQUIRE_RAY_TESTS"):
            pytest.fail(reason)
        pytest.skip(reason)
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, namespace="mlipilot", log_to_driver=False)
    yield
    ray.shutdown()
