"""Joining a Ray cluster: tried again when the head does not answer, and (the scorecard
service) not before the first evaluation, so a server starts before its Ray head does."""

from __future__ import annotations

import time

import pytest
import ray

from mlipilot import ray_runtime
from mlipilot.cli_services import _md_runner
from mlipilot.errors import MlipilotError


def test_a_cluster_that_does_not_answer_is_tried_again_then_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(time, "sleep", calls.append)

    def refused() -> None:
        raise ConnectionError("ray client connection timeout")

    with pytest.raises(MlipilotError, match=r"Ray at ray://head:10001: .*timeout \(3 tries\)"):
        ray_runtime._init(refused, "ray://head:10001", tries=3)
    assert calls == [5, 10]  # two pauses, growing

    answers = iter([ConnectionError("client server failed"), None])

    def flaky() -> None:
        if (answer := next(answers)) is not None:
            raise answer

    ray_runtime._init(flaky, "ray://head:10001", tries=3)  # the second try serves


def test_the_scorecard_service_joins_ray_at_its_first_evaluation_not_at_start() -> None:
    if ray.is_initialized():
        pytest.skip("a Ray session is already open in this process")
    started = time.monotonic()
    runner = _md_runner("ray://127.0.0.1:9", 1.0, "auto")  # nothing listens there
    assert time.monotonic() - started < 5 and not ray.is_initialized()
    assert runner.connect == "ray://127.0.0.1:9" and runner.ship
    with pytest.raises(MlipilotError, match="--md-gpus"):
        _md_runner("auto", 1.0, "two")
