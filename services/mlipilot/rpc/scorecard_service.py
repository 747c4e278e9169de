"""The scorecard service: ``mlipilot serve scorecard``.

It holds the scorecard specs (read-only, from a folder) and judges the model it is pointed at
by URI. The test split also comes by URI with the sha256 the caller expects; the service checks
the bytes before using them, so a result's test hash always describes what was measured.
Evaluations run in a worker thread; the gRPC handler streams their progress and stops them
when the caller goes away (a cancel or a deadline).
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

import ase
import grpc

from mlipilot.data.extxyz import load_extxyz
from mlipilot.errors import MlipilotError, clipped, shown
from mlipilot.rpc import artifacts
from mlipilot.rpc.convert import score_result_to_proto
from mlipilot.rpc.metrics import EVALUATION_SECONDS, EVALUATIONS
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.scorecard import Scorecard
from mlipilot.scoring.spec import ScorecardSpec, load_spec
from mlipilot.v1 import scorecard_pb2, scorecard_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = scorecard_pb2.DESCRIPTOR.services_by_name["ScorecardService"].full_name
# A status message rides in trailing metadata, percent-encoded; clients refuse it above 8 KiB.
MAX_MESSAGE_BYTES = 800


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
    def __init__(self, catalog: dict[str, CatalogEntry], max_concurrent: int = 1) -> None:
        self.catalog = catalog
        # Evaluations are CPU/GPU bound; more at once only slows each and skews throughput.
        self._slots = threading.BoundedSemaphore(max_concurrent)
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
        name = entry.spec.name
        aborted = threading.Event()
        if not context.add_callback(aborted.set):  # runs when the RPC ends, however it ends
            EVALUATIONS.labels(scorecard=name, status="aborted").inc()
            return  # already over: the caller left or its deadline passed
        waited = 0
        while not self._slots.acquire(timeout=1.0):
            if aborted.is_set():
                EVALUATIONS.labels(scorecard=name, status="aborted").inc()
                return
            waited += 1  # a heartbeat, so the caller can give up while we wait
            yield _progress("queued", waited, 0)
        yield from self._evaluate(request, entry, context, aborted)

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
                events.put(self._run(request, entry, progress))
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
        self, request: scorecard_pb2.EvaluateRequest, entry: CatalogEntry, progress
    ) -> ScoreResult:
        with tempfile.TemporaryDirectory(prefix="mlipilot-eval-") as tmp:
            work = Path(tmp)
            model = artifacts.fetch(request.model_uri, work / "candidate.model", "model_uri")
            baseline = model
            if request.baseline_model_uri:
                baseline = artifacts.fetch(
                    request.baseline_model_uri, work / "baseline.model", "baseline_model_uri"
                )
            frames = self._test_set(request.test_set_uri, request.test_set_sha256, work)
            scorecard = Scorecard(entry.spec, entry.sha256, frames, request.test_set_sha256)
            out = work / "artifacts"
            result = scorecard.evaluate(
                model, baseline_model_path=baseline, out_dir=out, progress=progress
            )
            if request.artifacts_uri and out.exists():
                artifacts.publish(out, request.artifacts_uri)
            return result

    def _test_set(self, uri: str, sha256: str, work: Path) -> list[ase.Atoms]:
        with self._test_lock:
            if sha256 in self._test_sets:
                return self._test_sets[sha256]
        path = artifacts.fetch(uri, work / "test.xyz", "test_set_uri")
        actual = artifacts.sha256_of(path)
        if actual != sha256:
            raise MlipilotError(
                f"test_set_sha256: {uri} has sha256 {actual}, the request says {sha256}"
            )
        try:
            frames = load_extxyz(path)
        except MlipilotError as exc:  # name the field and the URI, not our temporary copy
            detail = str(exc).replace(f"{path}: ", "")
            raise MlipilotError(f"test_set_uri: {uri}: {detail}") from exc
        with self._test_lock:
            self._test_sets[sha256] = frames
        return frames
