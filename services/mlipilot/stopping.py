"""Stopping a running campaign from outside: a user's cancel, or a server shutting down.

The loop checks between steps and from progress callbacks; training is killed by the trainer
itself (it watches the same event), so a stop takes effect within a second or so and the
ledger records how the campaign ended.
"""

from __future__ import annotations

import threading
from typing import Literal

StopStatus = Literal["cancelled", "interrupted"]


class CampaignStopped(Exception):
    """Raised inside the loop when a stop was requested; the ledger records ``status``."""

    def __init__(self, status: StopStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class StopRequest:
    """A one-shot, thread-safe request to stop one campaign; the first request wins."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self.status: StopStatus = "cancelled"
        self.reason = ""

    def request(self, status: StopStatus, reason: str) -> None:
        with self._lock:
            if self.event.is_set():
                return
            self.status, self.reason = status, reason
            self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        if self.event.is_set():
            raise CampaignStopped(self.status, self.reason)
