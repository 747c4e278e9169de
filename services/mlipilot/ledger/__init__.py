"""The campaign ledger, below everything that reads it: the append-only SQLite store with its
hash chain (``store``), what each row says (``events``: the columns, and per kind of event
the typed content of ``detail``), and a campaign's history built from the rows (``history``).
"""

from mlipilot.ledger.events import EventKind, LedgerEvent, utc_now
from mlipilot.ledger.history import CampaignHistory, candidate_of, ending, score_result
from mlipilot.ledger.store import (
    GENESIS,
    BrokenChainError,
    ChainReport,
    Ledger,
    check_chain,
    read_events,
    verify_chain,
)

__all__ = [
    "GENESIS",
    "BrokenChainError",
    "CampaignHistory",
    "ChainReport",
    "EventKind",
    "Ledger",
    "LedgerEvent",
    "candidate_of",
    "check_chain",
    "ending",
    "read_events",
    "score_result",
    "utc_now",
    "verify_chain",
]
