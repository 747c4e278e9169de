"""The scorecard: evaluate one trained model against a fixed spec and held-out data.

It owns the test split and the spec; what it receives from a candidate is a model file only.
Throughput is timed against the campaign's baseline model inside the same evaluation, so a
noisy machine slows both alike.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import ase
import torch

from mlipilot.errors import MlipilotError
from mlipilot.scoring.accuracy import evaluate_accuracy
from mlipilot.scoring.md_stability import ReplicaRunner, run_md_stability, run_replicas_here
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.short_range import probe_short_range
from mlipilot.scoring.spec import ScorecardSpec
from mlipilot.scoring.throughput import measure_throughput

StageProgress = Callable[[str, int, int], None]  # (stage, done, total)


class ScorerUnavailable(RuntimeError):
    """The scorer itself cannot work (a service down, refusing us): not the candidate's fault.

    The campaign stops with this as its cause instead of failing candidate after candidate.
    """


class Scorer(Protocol):
    """What the campaign loop needs from a scorecard: in process, or a gRPC service."""

    spec: ScorecardSpec
    spec_hash: str
    test_hash: str

    def evaluate(
        self,
        model_path: Path,
        *,
        baseline_model_path: Path,
        out_dir: Path,
        progress: StageProgress | None = None,
    ) -> ScoreResult: ...


def hardware() -> dict[str, str | int]:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cpu",
    }


class Scorecard:
    def __init__(
        self,
        spec: ScorecardSpec,
        spec_hash: str,
        test_frames: list[ase.Atoms],
        test_hash: str,
        md_runner: ReplicaRunner = run_replicas_here,
    ) -> None:
        bad = [i for i in spec.md.start_frames if not 0 <= i < len(test_frames)]
        if bad:
            raise MlipilotError(
                f"scorecard {spec.name}: md.start_frames {bad} out of range for a test split "
                f"of {len(test_frames)} frames"
            )
        if spec.short_range is not None and spec.short_range.start_frame >= len(test_frames):
            raise MlipilotError(
                f"scorecard {spec.name}: short_range.start_frame {spec.short_range.start_frame} "
                f"out of range for a test split of {len(test_frames)} frames"
            )
        self.spec = spec
        self.spec_hash = spec_hash
        self.test_frames = test_frames
        self.test_hash = test_hash
        self.md_runner = md_runner  # MD replicas here, or fanned out as Ray tasks

    def evaluate(
        self,
        model_path: Path,
        *,
        baseline_model_path: Path,
        out_dir: Path,
        progress: StageProgress | None = None,
    ) -> ScoreResult:
        spec = self.spec
        timings: dict[str, float] = {}
        # Stage boundaries are progress too: a caller may stop the evaluation at each one.
        report = progress or (lambda stage, done, total: None)
        report("accuracy", 0, 1)
        t0 = time.monotonic()
        metrics = dict(evaluate_accuracy(model_path, self.test_frames, spec.accuracy))
        timings["accuracy"] = time.monotonic() - t0
        report("accuracy", 1, 1)

        details: dict[str, object] = {}
        if spec.short_range is not None:
            report("short_range", 0, 1)
            t0 = time.monotonic()
            frame = self.test_frames[spec.short_range.start_frame]
            probe, details["short_range"] = probe_short_range(model_path, frame, spec.short_range)
            metrics.update(probe)
            timings["short_range"] = time.monotonic() - t0
            report("short_range", 1, 1)

        t0 = time.monotonic()
        starts = [self.test_frames[i] for i in spec.md.start_frames]
        md = run_md_stability(
            model_path,
            starts,
            spec.md,
            out_dir / "md",
            progress=(lambda d, t: progress("md", d, t)) if progress else None,
            runner=self.md_runner,
        )
        metrics.update(md.metrics)
        timings["md"] = time.monotonic() - t0

        report("throughput", 0, 1)
        t0 = time.monotonic()
        metrics.update(
            measure_throughput(model_path, baseline_model_path, starts[0], spec.throughput)
        )
        timings["throughput"] = time.monotonic() - t0
        report("throughput", 1, 1)

        return ScoreResult.judged(
            spec,
            metrics,
            spec_hash=self.spec_hash,
            test_hash=self.test_hash,
            hardware=hardware(),
            timings_s=timings,
            details={
                **details,
                "md_replicas": [r.model_dump(mode="json") for r in md.replicas],
            },
        )
