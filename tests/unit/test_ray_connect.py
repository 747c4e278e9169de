"""Joining a Ray cluster: tried again when the head does not answer, and (the scorecard
service) not before the first evaluation, so a server starts before its Ray head does."""

from __future__ import annotations

import pytest
import ray

from mlipilot import ray_runtime
from mlipilot.cli_services import _md_runner
from mlipilot.errors import MlipilotError


def test_a_cluster_that_does_not_answer_is_tried_again_then_named() -> None:
    # The pauses go to a list, not to a patched time.sleep: other threads of the test run
    # (a shared Ray session's) sleep too.
    calls: list[float] = []

    def refused() -> None:
        raise ConnectionError("ray client connection timeout")

    with pytest.raises(MlipilotError, match=r"Ray at ray://head:10001: .*timeout \(3 tries\)"):
        ray_runtime._init(refused, "ray://head:10001", tries=3, sleep=calls.append)
    assert calls == [5, 10]  # two pauses, growing

    answers = iter([ConnectionError("client server failed"), None])

    def flaky() -> None:
        if (answer := next(answers)) is not None:
            raise answer

    ray_runtime._init(flaky, "ray://head:10001", tries=3, sleep=calls.append)  # 2nd try serves
    assert calls == [5, 10, 5]


def test_the_scorecard_service_joins_ray_at_its_first_evaluation_not_at_start() -> None:
    if ray.is_initialized():
        pytest.skip("a Ray session is already open in this process")
    # Nothing listens there: joining now would raise after its tries instead of returning.
    runner = _md_runner("ray://127.0.0.1:9", 1.0, "auto")
    assert not ray.is_initialized()
    assert runner.connect == "ray://127.0.0.1:9" and runner.ship
    with pytest.raises(MlipilotError, match="--md-gpus"):
        _md_runner("auto", 1.0, "two")
