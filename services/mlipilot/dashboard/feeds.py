"""Campaigns followed as their ledgers grow: one feed per run folder, read incrementally.

A feed keeps the events read so far and reads only rows with a larger id, and only when the
ledger's files changed (a ``stat`` of ``ledger.sqlite`` and its WAL, not a query). One
background task refreshes the feeds someone is watching; a page request refreshes the feed it
reads. So a page with ten open campaigns costs ten stats per tick, never ten full reads.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlipilot.errors import MlipilotError
from mlipilot.ledger import CampaignHistory, LedgerEvent, read_events
from mlipilot.scoring.spec import ScorecardSpec, load_spec

# A run folder's name as the dashboard accepts it in a URL: what RunLayout makes, nothing that
# could climb out of the runs folder.
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class UnknownCampaign(MlipilotError):
    """No such run folder under the dashboard's runs folder."""


@dataclass
class CampaignFeed:
    run_dir: Path
    events: list[LedgerEvent] = field(default_factory=list)
    version: int = 0  # bumped whenever new events were read
    _stamp: tuple[int, ...] = ()
    _spec: tuple[ScorecardSpec, str] | None = None
    _history: CampaignHistory | None = None

    @property
    def id(self) -> str:
        return self.run_dir.name

    @property
    def ledger(self) -> Path:
        return self.run_dir / "ledger.sqlite"

    def refresh(self) -> bool:
        """Read the rows written since the last refresh; True when there were any."""
        stamp = _stamp(self.ledger)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        after = (self.events[-1].id or 0) if self.events else 0
        new = read_events(self.ledger, after_id=after)
        if not new:
            return False
        self.events.extend(new)
        self.version += 1
        self._history = None
        return True

    def history(self) -> CampaignHistory:
        if self._history is None:
            self._history = CampaignHistory.of(self.events)
        return self._history

    def spec(self) -> tuple[ScorecardSpec, str]:
        """The scorecard as run (copied into the run folder; fixed for the campaign)."""
        if self._spec is None:
            self._spec = load_spec(self.run_dir / "scorecard.yaml")
        return self._spec


def _stamp(ledger: Path) -> tuple[int, ...]:
    """What changes when a row is appended: size and mtime of the ledger and its WAL."""
    out: list[int] = []
    for path in (ledger, ledger.with_name(ledger.name + "-wal")):
        try:
            st = path.stat()
        except FileNotFoundError:
            out += [0, 0]
            continue
        out += [st.st_size, st.st_mtime_ns]
    return tuple(out)


class Feeds:
    """Every campaign under ``runs_root``, each followed by one feed shared by all readers."""

    def __init__(self, runs_root: Path, tick_s: float = 0.5) -> None:
        self.runs_root = Path(runs_root).resolve()
        self.tick_s = tick_s
        self._feeds: dict[str, CampaignFeed] = {}
        self._watchers: dict[str, int] = {}
        self.changed = asyncio.Condition()

    def ids(self) -> list[str]:
        """Run folders with a ledger, newest name last (names end in their UTC start stamp)."""
        if not self.runs_root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.runs_root.iterdir()
            if RUN_ID.match(p.name) and (p / "ledger.sqlite").is_file() and not p.is_symlink()
        )

    def feed(self, run_id: str) -> CampaignFeed:
        """The campaign's feed, refreshed; UnknownCampaign for anything but a run folder here."""
        if not RUN_ID.match(run_id):
            raise UnknownCampaign(f"no campaign {run_id!r}")
        feed = self._feeds.get(run_id)
        if feed is None:
            run_dir = self.runs_root / run_id
            if run_dir.is_symlink() or not (run_dir / "ledger.sqlite").is_file():
                raise UnknownCampaign(f"no campaign {run_id!r} in {self.runs_root}")
            feed = self._feeds[run_id] = CampaignFeed(run_dir)
        feed.refresh()
        return feed

    def watch(self, run_id: str) -> None:
        self._watchers[run_id] = self._watchers.get(run_id, 0) + 1

    def unwatch(self, run_id: str) -> None:
        self._watchers[run_id] -= 1
        if self._watchers[run_id] <= 0:
            del self._watchers[run_id]

    async def follow(self) -> None:
        """The background task: refresh the watched feeds every tick, wake their streams."""
        while True:
            await asyncio.sleep(self.tick_s)
            changed = False
            for run_id in list(self._watchers):
                feed = self._feeds.get(run_id)
                if feed is not None and feed.refresh():
                    changed = True
            if changed:
                async with self.changed:
                    self.changed.notify_all()
