"""Settings shared by every test folder."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# The fuzz tests: no per-example deadline (a real gRPC server or file I/O is in the loop), no
# example database left in the checkout, and slow data generation is expected, not a problem.
# Each test sets its own max_examples on top of this.
settings.register_profile(
    "mlipilot", deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("mlipilot")
