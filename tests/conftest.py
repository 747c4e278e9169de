"""Settings shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# The fuzz tests: no per-example deadline (a real gRPC server or file I/O is in the loop), no
# example database left in the checkout, and slow data generation is expected, not a problem.
# Each test sets its own max_examples on top of this.
settings.register_profile(
    "mlipilot", deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("mlipilot")


@pytest.fixture()
def torch_one_thread() -> Iterator[None]:
    """Tiny models and in-process MD on one torch thread, restored afterwards: on a shared
    2-core machine two-thread torch beside other busy processes was measured 10-60x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
