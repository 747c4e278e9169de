"""The run folder's life: created with the campaign as run, held by one writer, each
candidate's work folder made fresh, and the summary written at the end (layout.py: the map)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlipilot.atomic_files import replaced_atomically
from mlipilot.campaign.candidates import CandidateJob
from mlipilot.campaign.layout import RunLayout
from mlipilot.campaign.reporting import IterationRow
from mlipilot.campaign.validation_stage import ValidationRecord
from mlipilot.config import Campaign
from mlipilot.data.dataset import Dataset, file_sha256
from mlipilot.errors import MlipilotError, format_validation_error
from mlipilot.ledger import Ledger
from mlipilot.scoring.result import ScoreResult


@dataclass
class CampaignOutcome:
    layout: RunLayout
    rows: list[IterationRow]
    best_iteration: int
    best_result: ScoreResult
    wall_s: float
    validation: ValidationRecord | None = None  # of the best model; None: not validated

    def write_summary(self) -> None:
        """``summary.json``: the final table and where everything is, for scripts."""
        layout = self.layout
        summary = {
            "campaign_dir": str(layout.root),
            "best_iteration": self.best_iteration,
            "best_model": str(layout.best_model),
            "best_feasible": self.best_result.feasible,
            "best_composite": self.best_result.composite,
            "ledger": str(layout.ledger),
            "results_tsv": str(layout.results_tsv),
            "wall_s": round(self.wall_s, 1),
            "validation": _validation_summary(self.validation),
            "iterations": [r.model_dump() for r in self.rows],
        }
        layout.summary.write_text(json.dumps(summary, indent=2, default=str))


def _validation_summary(record: ValidationRecord | None) -> dict[str, Any]:
    """The best model's validation for scripts: what was checked and how it went."""
    if record is None:
        return {"status": "not validated", "reason": "the campaign names no validation suite"}
    fields = ("suite", "version", "sha256", "passed", "total", "failed", "result")
    return {
        "status": record.status,
        "reason": record.reason,
        **{k: record.detail[k] for k in fields if k in record.detail},
    }


def create_run(campaign: Campaign, campaign_yaml: str, out_root: Path) -> RunLayout:
    """The campaign's run folder, with the campaign file and scorecard spec as run.

    The ledger is created here, empty, so readers (a watcher) can open it from the start.
    """
    layout = RunLayout.create(out_root, campaign.name)
    (layout.root / "campaign.yaml").write_text(campaign_yaml)
    # As parsed, paths resolved: what a resume runs again, wherever the file was.
    layout.campaign_json.write_text(campaign.model_dump_json(indent=2))
    shutil.copyfile(campaign.scorecard, layout.root / "scorecard.yaml")
    Ledger(layout.ledger).close()
    return layout


def recorded_campaign(layout: RunLayout) -> Campaign:
    """The campaign as it was started in ``layout``, judged by the scorecard copied there."""
    path = layout.campaign_json
    try:
        campaign = Campaign.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise MlipilotError(f"{path}: cannot read the campaign as run: {exc}") from exc
    except ValidationError as exc:  # also what invalid JSON raises
        raise MlipilotError(format_validation_error(exc, str(path))) from exc
    return campaign.model_copy(update={"scorecard": layout.root / "scorecard.yaml"})


@contextmanager
def sole_writer(layout: RunLayout) -> Iterator[None]:
    """An exclusive lock on the run folder while this process writes its campaign.

    A second writer (``--resume`` of a campaign still running, two orchestrators on one
    volume) is refused rather than interleaved. The kernel drops the lock when its holder
    dies, even by SIGKILL, so a killed campaign can always be resumed.
    """
    path = layout.root / "writer.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise MlipilotError(
                f"{layout.root}: the campaign is being run by another process (pid {holder}); "
                "stop that one first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def training_split(layout: RunLayout, dataset: Dataset) -> Path:
    """The training split, copied into the run folder (checked against its hash): what every
    trainer reads. On a cluster the Ray pods mount the runs volume only, never the data
    volume that holds the test split."""
    dest = layout.train_split
    if not dest.is_file() or file_sha256(dest) != dataset.hash("train"):
        with replaced_atomically(dest) as tmp:
            shutil.copyfile(dataset.path("train"), tmp)
    return dest


def fresh_work_dir(job: CandidateJob, dispatched_before: bool) -> None:
    """The candidate's folder with its ``recipe.yaml``; one a killed run left half-way
    (``dispatched_before``) is kept beside it, as ``<name>.interrupted``."""
    if dispatched_before and job.work_dir.exists():
        _set_aside(job.work_dir)
    job.work_dir.mkdir(parents=True, exist_ok=True)
    (job.work_dir / "recipe.yaml").write_text(
        yaml.safe_dump(job.recipe.model_dump(), sort_keys=True)
    )


def _set_aside(work_dir: Path) -> None:
    """``it002`` -> ``it002.interrupted`` (``.interrupted-2``, ... when that exists)."""
    target = work_dir.with_name(f"{work_dir.name}.interrupted")
    n = 1
    while target.exists():
        n += 1
        target = work_dir.with_name(f"{work_dir.name}.interrupted-{n}")
    work_dir.rename(target)
