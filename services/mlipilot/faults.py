"""Named kill points, for the fault-injection tests of resume.

``MLIPILOT_KILL_AT=md:1`` makes the process SIGKILL itself the first time a campaign reaches
the named point (here: MD of a candidate of iteration 1): a real ``kill -9`` at a known place,
so a test can check that ``mlipilot run --resume`` recovers from each point. Without the
variable (always, outside tests) a point costs one environment lookup.

Points: ``agent`` (a proposal came back, not yet recorded), ``training`` (an epoch done, the
trainer still running), ``md`` (a candidate in its MD stage), ``decision`` (a decision
recorded, the incumbent's model not yet copied), ``after_decision`` (an iteration decided, the
next not started). The iteration is optional: ``training`` alone matches the first one.
"""

from __future__ import annotations

import os
import signal

ENV = "MLIPILOT_KILL_AT"
POINTS = ("agent", "training", "md", "decision", "after_decision")


def reached(point: str, iteration: int | None) -> None:
    """Die here, at once and without cleanup, when ``MLIPILOT_KILL_AT`` names this point."""
    target = os.environ.get(ENV)
    if not target:
        return
    name, _, at = target.partition(":")
    if name == point and (not at or (iteration is not None and int(at) == iteration)):
        os.kill(os.getpid(), signal.SIGKILL)
