"""Where a campaign's results live: ``runs/<campaign>-<UTC stamp>/``.

::

    runs/cu-emt-quick-20261127-064100/
      campaign.yaml        the campaign file as run (copied)
      campaign.json        the campaign as parsed, paths resolved (what --resume runs again)
      scorecard.yaml       the scorecard spec as run (copied; its hash is in every result)
      ledger.sqlite        the append-only audit ledger (WAL)
      writer.lock          held (flock) by the one process writing the campaign
      results.tsv          one line per decision, exported from the ledger
      summary.json         the final table and the paths below, for scripts
      best.model           the accepted incumbent's MACE model (for users; services read
                           each candidate's model-package.pt, never a pickle)
      train.xyz            the training split, copied: all trainers read (on a cluster, Ray
                           pods mount the runs volume only, never the data with its test split)
      candidates/it000/    the baseline; it001, it002, ... the proposals
        recipe.yaml        full recipe trained
        train.log          mace_run_train's output
        model-package.pt   the trained model as configuration + tensors (model_files/)
        mace/              mace's own work dir (model, checkpoints, logs)
        md/                one CSV trace per MD replica
        result.json        the scorecard result
      candidates/it002.interrupted/   a candidate killed mid-way, set aside on resume
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def create(cls, out_root: Path, campaign_name: str) -> RunLayout:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        root = out_root / f"{campaign_name}-{stamp}"
        suffix = 1
        while root.exists():  # two runs in the same second
            suffix += 1
            root = out_root / f"{campaign_name}-{stamp}-{suffix}"
        (root / "candidates").mkdir(parents=True)
        return cls(root.resolve())

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def campaign_json(self) -> Path:
        return self.root / "campaign.json"

    @property
    def results_tsv(self) -> Path:
        return self.root / "results.tsv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def code(self) -> Path:
        """Code mode: the training program's git repository (its log is the research history)."""
        return self.root / "code"

    @property
    def best_model(self) -> Path:
        return self.root / "best.model"

    @property
    def train_split(self) -> Path:
        return self.root / "train.xyz"

    def candidate(self, iteration: int) -> Path:
        return self.candidate_dir(f"it{iteration:03d}")

    def candidate_dir(self, name: str) -> Path:
        """``it003``, or ``it003-2`` for the second of several candidates in an iteration."""
        return self.root / "candidates" / name
