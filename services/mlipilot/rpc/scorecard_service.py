"""The scorecard service: ``mlipilot serve scorecard``.

It holds the scorecard specs (read-only, from a folder) and judges the model it is pointed at
by URI. The test split also comes by URI with the sha256 the caller expects; the service checks
the bytes before using them, so a result's test hash always describes what was measured.
Evaluations run in a worker thread; the gRPC handler streams their progress and stops them
when the caller goes away (a cancel or a deadline).

Every URI is checked against the roots the operator configured before anything is read
(rpc/artifacts.py), the model is a package of configuration and tensors, never a pickle
(model_files/), and at most ``max_queued`` evaluations wait for a slot: a caller cannot make
the service run code, read or write outside its roots, or pile up work without bound.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import ase
import grpc

from mlipilot.data.dataset import file_sha256
from mlipilot.data.extxyz import load_extxyz
from mlipilot.errors import MlipilotError, clipped, shown
from mlipilot.model_files import ModelFileError, read_package
from mlipilot.model_files.package import MAX_PACKAGE_BYTES
from mlipilot.rpc import artifacts
from mlipilot.rpc.artifacts import Location, UriPolicy, UriRefused
from mlipilot.rpc.convert import score_result_to_proto
from mlipilot.rpc.metrics import EVALUATION_SECONDS, EVALUATIONS
from mlipilot.scoring.md_stability import ReplicaRunner, run_replicas_here
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.scorecard import Scorecard
from mlipilot.scoring.spec import ScorecardSpec, load_spec
from mlipilot.v1 import scorecard_pb2, scorecard_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = scorecard_pb2.DESCRIPTOR.services_by_name["ScorecardService"].full_name
# A status message rides in trailing metadata, percent-encoded; clients refuse it above 8 KiB.
MAX_MESSAGE_BYTES = 800
MAX_TEST_SET_BYTES = 256 << 20


class _Targets(NamedTuple):
    """An evaluation's URIs, checked against the service's roots."""

    model: Location
    baseline: Location | None
    test_set: Location
    artifacts: Location | None


@dataclass(frozen=True)
class CatalogEntry:
    spec: ScorecardSpec
    sha256: str
    path: Path

    def to_proto(self) -> scorecard_pb2.Scorecard:
        return scorecard_pb2.Scorecard(
            name=self.spec.name,
            version=self.spec.version,
            description=self.spec.description.strip(),
            sha256=self.sha256,
            spec_yaml=self.path.read_text(),
        )


def load_catalog(folder: Path) -> dict[str, CatalogEntry]:
    """Every ``*.yaml`` spec in ``folder``, by its name; two specs with one name is an error."""
    entries: dict[str, CatalogEntry] = {}
    for path in sorted(folder.glob("*.yaml")):
        spec, sha = load_spec(path)
        if spec.name in entries:
            raise MlipilotError(
                f"scorecard spec {path}: name {spec.name!r} is already used by "
                f"{entries[spec.name].path}"
            )
        entries[spec.name] = CatalogEntry(spec, sha, path)
    if not entries:
        raise MlipilotError(f"scorecard folder {folder}: no *.yaml scorecard specs there")
    return entries


def _progress(stage: str, done: int, total: int) -> scorecard_pb2.EvaluateEvent:
    return scorecard_pb2.EvaluateEvent(
        progress=scorecard_pb2.EvaluationProgress(stage=stage, done=done, total=total)
    )


class _Aborted(Exception):
    """The caller went away (cancel or deadline): stop evaluating."""


class ScorecardServicer(scorecard_pb2_grpc.ScorecardServiceServicer):
    def __init__(
        self,
        catalog: dict[str, CatalogEntry],
        uris: UriPolicy,
        max_concurrent: int = 1,
        max_queued: int = 8,
        md_runner: ReplicaRunner = run_replicas_here,
    ) -> None:
        self.catalog = catalog
        self.uris = uris
        self.md_runner = md_runner  # MD replicas here, or on the Ray cluster's workers
        # Evaluations are CPU/GPU bound; more at once only slows each and skews throughput.
        self._slots = threading.BoundedSemaphore(max_concurrent)
        # Each waiting evaluation holds a server thread: past this many, callers are told to
        # come back rather than queued.
        self.max_queued = max_queued
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._test_sets: dict[str, list[ase.Atoms]] = {}  # by sha256
        self._test_lock = threading.Lock()

    def ListScorecards(self, request, context):
        cards = [e.to_proto() for e in self.catalog.values()]
        return scorecard_pb2.ListScorecardsResponse(scorecards=cards)

    def GetScorecard(self, request, context):
        return self._entry(request.name, context).to_proto()

    def Evaluate(self, request, context) -> Iterator[scorecard_pb2.EvaluateEvent]:
        entry = self._entry(request.scorecard, context)
        if request.scorecard_sha256 and request.scorecard_sha256 != entry.sha256:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"scorecard_sha256: scorecard {entry.spec.name} here has sha256 {entry.sha256}, "
                f"the request expects {shown(request.scorecard_sha256)}",
            )
        for field in ("model_uri", "test_set_uri", "test_set_sha256"):
            if not getattr(request, field):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: required")
        targets = self._targets(request, context)
        name = entry.spec.name
        aborted = threading.Event()
        if not context.add_callback(aborted.set):  # runs when the RPC ends, however it ends
            EVALUATIONS.labels(scorecard=name, status="aborted").inc()
            return  # already over: the caller left or its deadline passed
        if not self._slots.acquire(blocking=False):
            with self._waiting_lock:
                full = self._waiting >= self.max_queued
                self._waiting += 0 if full else 1
            if full:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.max_queued} evaluations are waiting already; try again later",
                )
            try:
                waited = 0
                while not self._slots.acquire(timeout=1.0):
                    if aborted.is_set():
                        EVALUATIONS.labels(scorecard=name, status="aborted").inc()
                        return
                    waited += 1  # a heartbeat, so the caller can give up while we wait
                    yield _progress("queued", waited, 0)
            finally:
                with self._waiting_lock:
                    self._waiting -= 1
        yield from self._evaluate(targets, request, entry, context, aborted)

    def _targets(self, request, context: grpc.ServicerContext) -> _Targets:
        """The request's URIs checked before any I/O: PERMISSION_DENIED outside the roots,
        INVALID_ARGUMENT when malformed."""
        try:
            return _Targets(
                model=self.uris.readable(request.model_uri, "model_uri"),
                baseline=(
                    self.uris.readable(request.baseline_model_uri, "baseline_model_uri")
                    if request.baseline_model_uri
                    else None
                ),
                test_set=self.uris.readable(request.test_set_uri, "test_set_uri"),
                artifacts=(
                    self.uris.writable(request.artifacts_uri, "artifacts_uri")
                    if request.artifacts_uri
                    else None
                ),
            )
        except UriRefused as exc:
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if exc.kind == "denied"
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            context.abort(code, clipped(str(exc), MAX_MESSAGE_BYTES))
        raise AssertionError("unreachable: abort raises")

    def _entry(self, name: str, context: grpc.ServicerContext) -> CatalogEntry:
        entry = self.catalog.get(name)
        if entry is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"scorecard {shown(name)}: not here; known: {', '.join(sorted(self.catalog))}",
            )
        return entry  # type: ignore[return-value]  # abort raises

    def _evaluate(
        self,
        targets: _Targets,
        request: scorecard_pb2.EvaluateRequest,
        entry: CatalogEntry,
        context: grpc.ServicerContext,
        aborted: threading.Event,
    ) -> Iterator[scorecard_pb2.EvaluateEvent]:
        events: queue.Queue[scorecard_pb2.EvaluateEvent | ScoreResult | BaseException] = (
            queue.Queue()
        )

        def progress(stage: str, done: int, total: int) -> None:
            if aborted.is_set():
                raise _Aborted()
            events.put(_progress(stage, done, total))

        def work() -> None:
            try:
                events.put(self._run(targets, request.test_set_sha256, entry, progress))
            except _Aborted as exc:
                # Counted here: once the RPC is over, gRPC may never resume the RPC thread
                # (the generator below) to read this.
                EVALUATIONS.labels(scorecard=entry.spec.name, status="aborted").inc()
                events.put(exc)
            except BaseException as exc:  # handed to the RPC thread, which reports it
                events.put(exc)
            finally:
                # The slot is held until the work really stops, also when the caller left
                # early: two evaluations at once would skew each other's throughput.
                self._slots.release()

        start = time.monotonic()
        threading.Thread(target=work, name=f"evaluate {request.candidate}", daemon=True).start()
        while True:
            item = events.get()
            if isinstance(item, scorecard_pb2.EvaluateEvent):
                yield item
                continue
            break
        name = entry.spec.name
        if isinstance(item, ScoreResult):
            EVALUATIONS.labels(scorecard=name, status="ok").inc()
            EVALUATION_SECONDS.labels(scorecard=name).observe(time.monotonic() - start)
            yield scorecard_pb2.EvaluateEvent(result=score_result_to_proto(item))
            return
        if isinstance(item, _Aborted):
            return  # the caller is gone (counted by the work thread); nobody reads a status
        EVALUATIONS.labels(scorecard=name, status="failed").inc()
        if isinstance(item, MlipilotError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, clipped(str(item), MAX_MESSAGE_BYTES))
        log.exception("evaluation of %s failed", request.candidate, exc_info=item)
        failure = f"evaluation failed: {type(item).__name__}: {item}"
        context.abort(grpc.StatusCode.INTERNAL, clipped(failure, MAX_MESSAGE_BYTES))

    def _run(
        self, targets: _Targets, test_sha256: str, entry: CatalogEntry, progress
    ) -> ScoreResult:
        with tempfile.TemporaryDirectory(prefix="mlipilot-eval-") as tmp:
            work = Path(tmp)
            frames = self._test_set(targets.test_set, test_sha256, work)
            model = _fetch_model(targets.model, work / "candidate.model", "model_uri")
            baseline = model
            if targets.baseline is not None:
                baseline = _fetch_model(
                    targets.baseline, work / "baseline.model", "baseline_model_uri"
                )
            scorecard = Scorecard(entry.spec, entry.sha256, frames, test_sha256, self.md_runner)
            out = work / "artifacts"
            result = scorecard.evaluate(
                model, baseline_model_path=baseline, out_dir=out, progress=progress
            )
            if targets.artifacts is not None and out.exists():
                artifacts.publish(out, targets.artifacts)
            return result

    def _test_set(self, location: Location, sha256: str, work: Path) -> list[ase.Atoms]:
        with self._test_lock:
            if sha256 in self._test_sets:
                return self._test_sets[sha256]
        uri = location.uri
        path = artifacts.fetch(location, work / "test.xyz", "test_set_uri", MAX_TEST_SET_BYTES)
        if file_sha256(path) != sha256:  # never tell the hash of what was read
            raise MlipilotError(f"test_set_sha256: {uri} does not have the sha256 requested")
        try:
            frames = load_extxyz(path)
        except MlipilotError as exc:  # name the field and the URI, not our temporary copy
            detail = str(exc).replace(f"{path}: ", "")
            raise MlipilotError(f"test_set_uri: {uri}: {detail}") from exc
        with self._test_lock:
            self._test_sets[sha256] = frames
        return frames


def _fetch_model(location: Location, dest: Path, field: str) -> Path:
    """The model copied here and checked: a package that rebuilds (model_files/), or an
    error naming the field and the URI, not our temporary copy."""
    artifacts.fetch(location, dest, field, MAX_PACKAGE_BYTES)
    try:
        read_package(dest)
    except ModelFileError as exc:
        detail = str(exc).replace(f"{dest}: ", "").replace(str(dest), "the file")
        raise MlipilotError(f"{field}: {location.uri}: {detail}") from None
    return dest
