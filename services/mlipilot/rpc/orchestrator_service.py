"""The orchestrator service: ``mlipilot serve orchestrator``.

Each created campaign runs the same loop as ``mlipilot run``, in its own thread, into a run
folder under ``--runs``; the folder's name is the campaign id. Everything a client reads (get,
list, watch) comes from the campaign's ledger, so it also covers campaigns of earlier server
lifetimes and of ``mlipilot run``, and a watcher can resume from any event. On start, the
server resumes the campaigns an earlier lifetime left unfinished (killed, or interrupted by a
shutdown), as ``mlipilot run --resume`` would.

A submitted campaign is admitted by the server's CampaignPolicy (rpc/campaign_policy.py): it
names the server's scorecards and model endpoints and keeps its files under the server's
roots. At most ``max_campaigns`` run at once and ``max_watchers`` WatchCampaign streams are
open at once (each holds a server thread); beyond, callers get RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from mlipilot.campaign.layout import RunLayout
from mlipilot.campaign.loop import ScorerFactory, local_scorer, resume_campaign, run_in_layout
from mlipilot.campaign.reporting import IterationRow, NullReporter
from mlipilot.campaign.run_folder import create_run
from mlipilot.config import Campaign, parse_campaign_text
from mlipilot.errors import MlipilotError, clipped, shown
from mlipilot.ledger import CampaignHistory, Ledger, LedgerEvent, ending, read_events
from mlipilot.rpc import fetch
from mlipilot.rpc.campaign_policy import CampaignDenied, CampaignPolicy
from mlipilot.rpc.convert import STATUS_BY_NAME, event_to_proto, timestamp
from mlipilot.rpc.metrics import (
    ACTIVE_CAMPAIGNS,
    CAMPAIGNS,
    CANDIDATES_IN_FLIGHT,
    DECISIONS,
    ITERATIONS,
    LLM_TOKENS,
)
from mlipilot.scoring.scorecard import ScorerUnavailable
from mlipilot.scoring.spec import load_spec
from mlipilot.stopping import CampaignStopped, StopRequest
from mlipilot.v1 import orchestrator_pb2, orchestrator_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a run folder's name, never a path
WATCH_POLL_S = 0.2
# Status messages and details ride in trailing metadata (8 KiB soft limit at the client; the
# message is percent-encoded, up to 3 bytes per byte): keep them well under it.
MAX_MESSAGE_BYTES = 800
_MAX_FIELDS = 8
_MAX_FIELD_BYTES = 80


class MetricsReporter(NullReporter):
    """Counts iterations, decisions, tokens and candidates in flight for Prometheus as the loop
    makes them (one per campaign: ``close`` takes its candidates out of the in-flight gauge,
    however the campaign ended)."""

    def __init__(self) -> None:
        self._stage: dict[str, str] = {}  # candidate -> training | scoring, while in flight

    def stage(self, candidate: str, stage: str, done: int, total: int) -> None:
        now = "training" if stage == "train" else "scoring"
        before = self._stage.get(candidate)
        if before == now:
            return
        if before is not None:
            CANDIDATES_IN_FLIGHT.labels(stage=before).dec()
        CANDIDATES_IN_FLIGHT.labels(stage=now).inc()
        self._stage[candidate] = now

    def decision(self, row: IterationRow) -> None:
        ITERATIONS.inc()
        DECISIONS.labels(verdict=row.verdict).inc()
        LLM_TOKENS.labels(kind="prompt").inc(row.prompt_tokens or 0)
        LLM_TOKENS.labels(kind="completion").inc(row.completion_tokens or 0)
        self._landed(row.candidate)

    def _landed(self, candidate: str) -> None:
        stage = self._stage.pop(candidate, None)
        if stage is not None:
            CANDIDATES_IN_FLIGHT.labels(stage=stage).dec()

    def close(self) -> None:
        for candidate in list(self._stage):
            self._landed(candidate)


@dataclass
class _Live:
    thread: threading.Thread
    stop: StopRequest
    layout: RunLayout


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(
        self,
        runs_root: Path,
        policy: CampaignPolicy,
        scorer_factory: ScorerFactory = local_scorer,
        base_dir: Path | None = None,
        max_campaigns: int = 4,
        max_watchers: int = 32,
        max_artifact_bytes: int = fetch.MAX_ARTIFACT_BYTES,
    ) -> None:
        self.runs_root = runs_root.resolve()
        self.runs_root.mkdir(parents=True, exist_ok=True)
        self.policy = policy
        self.scorer_factory = scorer_factory
        self.base_dir = (base_dir or Path.cwd()).resolve()
        self.max_campaigns = max_campaigns
        self._watchers = threading.BoundedSemaphore(max_watchers)
        self.max_watchers = max_watchers
        self.max_artifact_bytes = max_artifact_bytes
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()
        self._closing = False

    # --- RPCs -----------------------------------------------------------------------------

    def CreateCampaign(self, request, context):
        campaign = self._validated(request, context)
        with self._lock:
            if self._closing:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the orchestrator is shutting down")
            if len(self._live) >= self.max_campaigns:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{len(self._live)} campaigns are running, the most this server runs at "
                    "once; wait for one to end or cancel one",
                )
            try:
                layout = create_run(campaign, request.campaign_yaml, self.runs_root)
            except OSError as exc:
                context.abort(grpc.StatusCode.INTERNAL, f"cannot create the run folder: {exc}")
            self._launch(layout, campaign)
            CAMPAIGNS.labels(status="created").inc()
        log.info("campaign %s created from %s", layout.root.name, request.source_name)
        return self._summary(layout.root.name, context)

    def GetCampaign(self, request, context):
        return self._summary(request.id, context)

    def ListCampaigns(self, request, context):
        ids = [p.parent.name for p in self.runs_root.glob("*/ledger.sqlite")]
        ids.sort(key=lambda i: (self.runs_root / i).stat().st_mtime, reverse=True)
        campaigns = []
        for campaign_id in ids:
            if not _ID.match(campaign_id):
                continue
            try:
                campaigns.append(self._summary(campaign_id, context))
            except sqlite3.Error as exc:  # one unreadable ledger must not hide the others
                log.warning("skipping %s: unreadable ledger: %s", campaign_id, exc)
        return orchestrator_pb2.ListCampaignsResponse(campaigns=campaigns)

    def WatchCampaign(self, request, context) -> Iterator[orchestrator_pb2.CampaignEvent]:
        ledger = self._ledger_path(request.id, context)
        if not self._watchers.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_watchers} watch streams are open, the most this server keeps; "
                "close one or poll with GetCampaign",
            )
        try:
            yield from self._watch(ledger, request, context)
        finally:
            self._watchers.release()

    def _watch(
        self, ledger: Path, request, context: grpc.ServicerContext
    ) -> Iterator[orchestrator_pb2.CampaignEvent]:
        after = request.after_sequence
        while context.is_active():
            live = request.id in self._live  # read before the ledger: no end can be missed
            events = read_events(ledger, after) if ledger.exists() else []
            for event in events:
                yield event_to_proto(event, request.id)
                after = event.id or after
                if event.event == "campaign_finished":
                    return
            if not live and not events:
                return  # not running here and nothing new: an interrupted campaign's end
            time.sleep(WATCH_POLL_S)

    def FetchArtifact(self, request, context) -> Iterator[orchestrator_pb2.ArtifactChunk]:
        run_dir = self._ledger_path(request.id, context).parent
        if request.artifact not in fetch.NAMES:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"artifact: {request.artifact} is not one of "
                + ", ".join(orchestrator_pb2.Artifact.Name(a) for a in fetch.NAMES),
            )
        # One at a time per server, like a watch stream: a report is drawn, a ledger copied.
        if not self._watchers.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many streams open; retry")
        try:
            with tempfile.TemporaryDirectory(prefix="mlipilot-fetch-") as folder:
                try:
                    path = fetch.prepare(run_dir, request.artifact, Path(folder))
                    stream = fetch.chunks(path, self.max_artifact_bytes)
                    first = next(stream)
                except fetch.ArtifactMissing as exc:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, clipped(str(exc), 1000))
                except fetch.ArtifactTooLarge as exc:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                yield first
                for chunk in stream:
                    if not context.is_active():
                        return
                    yield chunk
        finally:
            self._watchers.release()

    def CancelCampaign(self, request, context):
        self._ledger_path(request.id, context)
        live = self._live.get(request.id)
        if live is None:
            current = self._summary(request.id, context)
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"campaign {request.id} is not running here "
                f"(status {orchestrator_pb2.CampaignStatus.Name(current.status)})",
            )
        live.stop.request("cancelled", "cancelled by a client request")
        remaining = context.time_remaining()
        live.thread.join(timeout=min(60.0, remaining if remaining is not None else 60.0))
        return self._summary(request.id, context)

    # --- lifecycle --------------------------------------------------------------------------

    def resume_unfinished(self) -> list[str]:
        """Resume the campaigns of earlier lifetimes that have no end in their ledger (the
        server was killed) or ended ``interrupted`` (it was shut down); return their ids.

        Failed and cancelled campaigns stay as they are: someone should look first.
        """
        resumed = []
        for ledger in sorted(self.runs_root.glob("*/ledger.sqlite")):
            campaign_id = ledger.parent.name
            if not _ID.match(campaign_id) or not (ledger.parent / "campaign.json").is_file():
                continue
            try:
                end = ending(read_events(ledger))
            except sqlite3.Error as exc:
                log.warning("not resuming %s: unreadable ledger: %s", campaign_id, exc)
                continue
            if end is not None and end.status != "interrupted":
                continue
            with self._lock:
                if self._closing or campaign_id in self._live:
                    continue
                self._launch(RunLayout(ledger.parent), None)
            resumed.append(campaign_id)
            log.info("campaign %s resumed", campaign_id)
        return resumed

    def _launch(self, layout: RunLayout, campaign: Campaign | None) -> None:
        """Run (or, without ``campaign``, resume) a campaign in a thread; call under the lock."""
        stop = StopRequest()
        # Daemon: a campaign still winding down when the shutdown grace is over must not keep
        # the process alive; its ledger gets the interruption recorded instead.
        thread = threading.Thread(
            target=self._run, args=(campaign, layout, stop), name=layout.root.name, daemon=True
        )
        self._live[layout.root.name] = _Live(thread, stop, layout)
        ACTIVE_CAMPAIGNS.inc()
        thread.start()

    def shutdown(self, grace_s: float = 30.0) -> None:
        """Stop every running campaign as INTERRUPTED (recorded in its ledger), then wait."""
        with self._lock:
            self._closing = True
            live = list(self._live.values())
        for item in live:
            item.stop.request("interrupted", "the orchestrator shut down (SIGTERM)")
        deadline = time.monotonic() + grace_s
        for item in live:
            item.thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if item.thread.is_alive():  # stuck past the grace period: record it ourselves
                with Ledger(item.layout.ledger) as ledger:
                    ledger.append(
                        LedgerEvent(
                            campaign=item.layout.root.name,
                            event="campaign_finished",
                            status="interrupted",
                            reason=f"the orchestrator shut down; still busy after {grace_s:g} s",
                        )
                    )

    def _run(self, campaign: Campaign | None, layout: RunLayout, stop: StopRequest) -> None:
        status = "failed"
        reporter = MetricsReporter()
        options = {"reporter": reporter, "scorer_factory": self.scorer_factory}
        try:
            if campaign is None:
                resume_campaign(layout.root, stop=stop, **options)
            else:
                run_in_layout(campaign, layout, stop=stop, **options)
            status = "finished"
        except CampaignStopped as exc:
            status = exc.status
        except MlipilotError as exc:  # e.g. held by another process, or its inputs changed
            log.error("campaign %s: %s", layout.root.name, exc)
        except BaseException:
            log.exception("campaign %s failed", layout.root.name)
        finally:
            reporter.close()
            CAMPAIGNS.labels(status=status).inc()
            ACTIVE_CAMPAIGNS.dec()
            with self._lock:
                self._live.pop(layout.root.name, None)

    # --- helpers ----------------------------------------------------------------------------

    def _validated(self, request, context: grpc.ServicerContext) -> Campaign:
        base = Path(request.base_dir) if request.base_dir else self.base_dir
        try:
            written, _ = parse_campaign_text(request.campaign_yaml, request.source_name)
            campaign = self.policy.admit(written, base, request.source_name)
            spec, spec_hash = load_spec(campaign.scorecard)  # the server's own catalog file
            preflight = getattr(self.scorer_factory, "preflight", None)
            if preflight is not None:
                preflight(spec, spec_hash)
        except CampaignDenied as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, clipped(str(exc), MAX_MESSAGE_BYTES))
        except MlipilotError as exc:
            _abort_invalid(context, exc)
        except ScorerUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, clipped(str(exc), MAX_MESSAGE_BYTES))
        return campaign

    def _ledger_path(self, campaign_id: str, context: grpc.ServicerContext) -> Path:
        path = self.runs_root / campaign_id / "ledger.sqlite"
        try:
            known = bool(_ID.match(campaign_id)) and (path.exists() or campaign_id in self._live)
        except OSError:  # e.g. an id longer than a file name may be
            known = False
        if not known:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"campaign {shown(campaign_id)}: no such campaign"
            )
        return path

    def _summary(
        self, campaign_id: str, context: grpc.ServicerContext
    ) -> orchestrator_pb2.Campaign:
        path = self._ledger_path(campaign_id, context)
        running = campaign_id in self._live  # before reading: an end is never missed
        events = read_events(path) if path.exists() else []
        return summarize(campaign_id, events, running=running, run_dir=path.parent)


def _abort_invalid(context: grpc.ServicerContext, exc: MlipilotError) -> None:
    """INVALID_ARGUMENT with the message, and the fields as google.rpc.BadRequest details.

    Message and details travel in trailing metadata, which clients refuse above 8-16 KiB (they
    would see RESOURCE_EXHAUSTED instead), so both are cut short: the message, the number of
    fields, and each field's description (the message line about that field).
    """
    lines = str(exc).splitlines() or [""]

    def about(field: str) -> str:
        return next((line for line in lines if f": {field}: " in line), lines[0])

    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=clipped(f, _MAX_FIELD_BYTES), description=clipped(about(f), 160)
            )
            for f in (exc.fields or ("campaign_yaml",))[:_MAX_FIELDS]
        ]
    )
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=clipped(str(exc), MAX_MESSAGE_BYTES)
    )
    status.details.add().Pack(bad)
    context.abort_with_status(rpc_status.to_status(status))


def summarize(
    campaign_id: str, events: list[LedgerEvent], *, running: bool, run_dir: Path
) -> orchestrator_pb2.Campaign:
    """A campaign's state as its ledger tells it."""
    msg = orchestrator_pb2.Campaign(id=campaign_id, name=campaign_id, run_uri=run_dir.as_uri())
    history = CampaignHistory.of(events)
    started, finished = history.started, history.ending
    if events:
        msg.last_sequence = events[-1].id or 0
        msg.created_time.CopyFrom(timestamp(events[0].ts))
    if started is not None:
        msg.name = str(history.setting("name") or campaign_id)
        msg.agent = started.agent or ""
        msg.iterations_budget = int(history.setting("budget", "iterations") or 0)
    decisions = [e for e in events if e.event == "decision"]
    msg.iterations_decided = len(decisions)
    # The baseline is the first incumbent; each accepted candidate replaces it.
    kept = [e for e in decisions if e.decision in ("BASELINE", "ACCEPT") and e.metrics]
    if kept:
        incumbent = kept[-1]
        msg.incumbent_iteration = incumbent.iteration or 0
        evaluation = next(
            (
                e
                for e in reversed(events)
                if e.event == "evaluation" and e.candidate == incumbent.candidate and e.metrics
            ),
            incumbent,  # a duplicate has no evaluation of its own: its decision has the result
        )
        evaluated = evaluation.model_copy(update={"event": "evaluation"})
        msg.incumbent_result.CopyFrom(event_to_proto(evaluated, campaign_id).result.result)
    if finished is not None:
        msg.status = STATUS_BY_NAME.get(finished.status or "", 0)
        msg.status_reason = finished.reason or ""
        msg.finished_time.CopyFrom(timestamp(finished.ts))
    elif running:
        msg.status = orchestrator_pb2.CAMPAIGN_STATUS_RUNNING
    else:
        msg.status = orchestrator_pb2.CAMPAIGN_STATUS_INTERRUPTED
        msg.status_reason = "no end in the ledger and not running here: the server stopped"
    return msg
