"""A client of the orchestrator service, used by ``mlipilot submit/watch/list/get/cancel``.

``watch`` resumes by sequence number when the connection drops, so a watcher sees every event
exactly once whatever happens to the network in between.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mlipilot.errors import MlipilotError
from mlipilot.rpc.convert import from_struct, label, status_name
from mlipilot.v1 import orchestrator_pb2, orchestrator_pb2_grpc

# A dropped connection is worth retrying; anything else is an answer.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}


def rpc_error(exc: grpc.RpcError, server: str) -> MlipilotError:
    """The server's answer as a user-facing error, with the fields it names."""
    fields: list[str] = []
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return MlipilotError(f"{server}: {exc.code().name}: {exc.details()}", fields=tuple(fields))


class OrchestratorClient:
    def __init__(self, channel: grpc.Channel, server: str, timeout_s: float = 30.0) -> None:
        self.stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        self.server = server
        self.timeout_s = timeout_s

    def create(
        self, campaign_file: Path, paths_on_server: bool = False
    ) -> orchestrator_pb2.Campaign:
        """Start the campaign in ``campaign_file``. Its relative paths resolve against the
        file's folder (client and server share a file system: a laptop, a shared volume), or
        with ``paths_on_server`` against the server's own working folder (a cluster)."""
        try:
            text = campaign_file.read_text()
        except OSError as exc:
            raise MlipilotError(f"campaign file {campaign_file}: cannot read it: {exc}") from exc
        request = orchestrator_pb2.CreateCampaignRequest(
            campaign_yaml=text,
            source_name=str(campaign_file),
            base_dir="" if paths_on_server else str(campaign_file.resolve().parent),
        )
        return self._call(self.stub.CreateCampaign, request)

    def get(self, campaign_id: str) -> orchestrator_pb2.Campaign:
        return self._call(
            self.stub.GetCampaign, orchestrator_pb2.GetCampaignRequest(id=campaign_id)
        )

    def list(self) -> list[orchestrator_pb2.Campaign]:
        reply = self._call(self.stub.ListCampaigns, orchestrator_pb2.ListCampaignsRequest())
        return list(reply.campaigns)

    def cancel(self, campaign_id: str) -> orchestrator_pb2.Campaign:
        request = orchestrator_pb2.CancelCampaignRequest(id=campaign_id)
        return self._call(self.stub.CancelCampaign, request, timeout_s=90.0)

    def watch(
        self, campaign_id: str, after: int = 0, retries: int = 5, backoff_s: float = 1.0
    ) -> Iterator[orchestrator_pb2.CampaignEvent]:
        """Every event after ``after`` until the campaign ends, reconnecting when dropped."""
        failures = 0
        while True:
            request = orchestrator_pb2.WatchCampaignRequest(id=campaign_id, after_sequence=after)
            try:
                for event in self.stub.WatchCampaign(request):
                    after = event.sequence
                    failures = 0
                    yield event
                return
            except grpc.RpcError as exc:
                if exc.code() not in _RETRYABLE or failures >= retries:
                    raise rpc_error(exc, self.server) from exc
                failures += 1
                time.sleep(backoff_s * failures)

    def fetch(self, campaign_id: str, artifact: str, dest: Path) -> Path:
        """The campaign's ``report``, ``model`` or ``ledger`` into folder ``dest``, checked:
        the report unpacked (its page's path), the model as a package and a MACE file (the
        MACE file's path), the ledger as a SQLite file."""
        from mlipilot.rpc import fetch

        kinds = {
            "report": orchestrator_pb2.ARTIFACT_REPORT,
            "model": orchestrator_pb2.ARTIFACT_BEST_MODEL,
            "ledger": orchestrator_pb2.ARTIFACT_LEDGER,
        }
        if artifact not in kinds:
            raise MlipilotError(f"artifact: {artifact!r}; one of {', '.join(kinds)}")
        request = orchestrator_pb2.FetchArtifactRequest(id=campaign_id, artifact=kinds[artifact])
        try:
            path = fetch.receive(
                self.stub.FetchArtifact(request, timeout=max(self.timeout_s, 600.0)), dest
            )
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.server) from exc
        if artifact == "report":
            page = fetch.unpack_report(path, dest)
            path.unlink()
            return page
        if artifact == "model":
            return fetch.keep_model(path)
        return path

    def _call(self, method, request, timeout_s: float | None = None):
        try:
            return method(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.server) from exc


def describe_event(event: orchestrator_pb2.CampaignEvent) -> str:
    """One line a person can read, prefixed with the sequence number to resume from."""
    who = event.candidate or "campaign"
    kind = event.WhichOneof("event")
    body = getattr(event, kind) if kind else None
    text = kind or "event"
    if kind == "campaign_started":
        text = f"started: agent {body.agent}, scorecard {body.scorecard_sha256[:12]}"
    elif kind == "campaign_resumed":
        text = f"resumed: agent {body.agent}; {body.reason}"
    elif kind == "iteration_started":
        text = f"iteration {event.iteration} of {body.iterations_budget} started"
    elif kind == "proposal":
        patch = json.dumps(from_struct(body.patch), sort_keys=True) if body.patch.fields else "{}"
        dup = " (duplicate, not retrained)" if body.duplicate else ""
        text = f"proposal by {body.agent}: {patch}{dup} — {body.hypothesis}"
    elif kind == "agent_failure":
        kind_word = label(orchestrator_pb2.AgentFailureKind, body.kind)
        text = f"agent {body.agent} {kind_word}: {body.reason}"
    elif kind == "agent_call":
        tokens = f"{body.prompt_tokens} prompt + {body.completion_tokens} completion tokens"
        why = f": {body.reason}" if body.reason else ""
        text = (
            f"agent {body.agent} {body.status} after {body.requests} call(s), {tokens}, "
            f"{body.duration_seconds:.1f} s{why}"
        )
    elif kind == "seed_repeat":
        text = f"{body.side} {body.repeat_of} trained again with seed {body.seed} (noise check)"
    elif kind == "training_progress":
        text = f"train epoch {body.epoch}/{body.epochs_budget} loss {body.loss:.4g}"
    elif kind == "training_finished":
        cause = f": {body.cause}" if body.cause else ""
        status = label(orchestrator_pb2.TrainingStatus, body.status)
        text = f"training {status} in {body.duration_seconds:.1f} s{cause}"
    elif kind == "scorecard_progress":
        text = f"scorecard {body.stage} {body.done}/{body.total}"
    elif kind == "result":
        if body.HasField("result"):
            r = body.result
            verdict = (
                f"feasible, composite {r.composite:.3f}"
                if r.feasible
                else f"infeasible, violation {r.total_violation:.3f}"
            )
            text = f"scored in {body.duration_seconds:.1f} s: {verdict}"
        else:
            text = f"scoring {label(orchestrator_pb2.EvaluationStatus, body.status)}: {body.reason}"
    elif kind == "decision":
        text = f"{label(orchestrator_pb2.Verdict, body.verdict).upper()}: {body.reason}"
    elif kind == "validation":
        text = f"validation {body.status}: {body.reason}"
    elif kind == "campaign_finished":
        text = f"{status_name(body.status).upper()}: {body.reason}"
    return f"[{event.sequence:>5}] {who:<8} {text}"
