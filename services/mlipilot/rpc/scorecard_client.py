"""The campaign loop's scorer when the scorecard is a gRPC service (``--scorecard HOST:PORT``).

It has the same interface as the in-process ``Scorecard``; models, the test split and MD traces
go by URI. Before a campaign starts, the service's spec must hash the same as the campaign's
scorecard file, so the orchestrator and the service never judge by different yardsticks.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from mlipilot.data.dataset import Dataset
from mlipilot.errors import MlipilotError
from mlipilot.rpc.convert import score_result_from_proto
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.scorecard import ScorerUnavailable, StageProgress
from mlipilot.scoring.spec import ScorecardSpec
from mlipilot.v1 import scorecard_pb2, scorecard_pb2_grpc

# Answers about the service or the link, not about the model: the campaign stops on these.
_INFRASTRUCTURE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.NOT_FOUND,  # the scorecard went away from the service
    grpc.StatusCode.FAILED_PRECONDITION,  # its spec changed under a running campaign
}
# Default per evaluation: generous (the scorecard runs MD), but a hung service cannot hold a
# campaign forever.
EVALUATE_TIMEOUT_S = 3600.0


class ScorecardServiceError(RuntimeError):
    """The scorecard service could not score this model; the candidate fails with it."""


def check_remote_spec(
    stub: scorecard_pb2_grpc.ScorecardServiceStub, spec: ScorecardSpec, spec_hash: str
) -> None:
    """Raise MlipilotError unless the service has ``spec`` with exactly this sha256."""
    request = scorecard_pb2.GetScorecardRequest(name=spec.name)
    try:
        remote = stub.GetScorecard(request, timeout=30)
    except grpc.RpcError as exc:
        message = f"the scorecard service: {exc.code().name}: {exc.details()}"
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # the campaign names a spec it lacks
            raise MlipilotError(f"scorecard: {message}", fields=("scorecard",)) from exc
        raise ScorerUnavailable(message) from exc
    if remote.sha256 != spec_hash:
        raise MlipilotError(
            f"scorecard: the scorecard service's {spec.name!r} has sha256 {remote.sha256}, "
            f"the campaign's file has {spec_hash}; both must judge with the same spec",
            fields=("scorecard",),
        )


class RemoteScorecard:
    def __init__(
        self,
        channel: grpc.Channel,
        spec: ScorecardSpec,
        spec_hash: str,
        dataset: Dataset,
        timeout_s: float = EVALUATE_TIMEOUT_S,
    ) -> None:
        self.stub = scorecard_pb2_grpc.ScorecardServiceStub(channel)
        check_remote_spec(self.stub, spec, spec_hash)
        self.spec = spec
        self.spec_hash = spec_hash
        self.test_hash = dataset.hash("test")
        self._test_uri = dataset.path("test").resolve().as_uri()
        self._timeout_s = timeout_s

    def evaluate(
        self,
        model_path: Path,
        *,
        baseline_model_path: Path,
        out_dir: Path,
        progress: StageProgress | None = None,
    ) -> ScoreResult:
        request = scorecard_pb2.EvaluateRequest(
            scorecard=self.spec.name,
            scorecard_sha256=self.spec_hash,
            model_uri=model_path.resolve().as_uri(),
            baseline_model_uri=baseline_model_path.resolve().as_uri(),
            test_set_uri=self._test_uri,
            test_set_sha256=self.test_hash,
            artifacts_uri=out_dir.resolve().as_uri(),
            candidate=f"{out_dir.parent.parent.name}/{out_dir.name}",
        )
        # wait_for_ready: a scorecard pod restarting is waited for (within the deadline).
        call = self.stub.Evaluate(request, timeout=self._timeout_s, wait_for_ready=True)
        result = None
        try:
            for event in call:
                if event.HasField("progress") and progress is not None:
                    p = event.progress
                    progress(p.stage, p.done, p.total)  # may raise to stop the campaign
                elif event.HasField("result"):
                    result = score_result_from_proto(event.result)
        except grpc.RpcError as exc:
            message = f"scorecard service: {exc.code().name}: {exc.details()}"
            if exc.code() in _INFRASTRUCTURE:
                raise ScorerUnavailable(message) from exc
            raise ScorecardServiceError(message) from exc
        finally:
            call.cancel()  # no-op when done; stops the remote evaluation when we stop early
        if result is None:
            raise ScorecardServiceError("the scorecard service ended without a result")
        return result


class RemoteScorerFactory:
    """Builds a ``RemoteScorecard`` per campaign over one shared channel."""

    def __init__(self, channel: grpc.Channel, timeout_s: float = EVALUATE_TIMEOUT_S) -> None:
        self.channel = channel
        self.timeout_s = timeout_s

    def preflight(self, spec: ScorecardSpec, spec_hash: str) -> None:
        check_remote_spec(scorecard_pb2_grpc.ScorecardServiceStub(self.channel), spec, spec_hash)

    def __call__(self, spec: ScorecardSpec, spec_hash: str, dataset: Dataset) -> RemoteScorecard:
        return RemoteScorecard(self.channel, spec, spec_hash, dataset, self.timeout_s)
