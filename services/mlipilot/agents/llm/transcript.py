"""The bounded transcript an ``agent_call`` ledger row keeps of one conversation.

A model's answers can be as long as the server lets them be; the ledger keeps each text of a
message (content, reasoning, tool-call arguments) up to ``LEDGER_TEXT_MAX_BYTES`` and all of a
conversation's texts together up to ``LEDGER_TEXTS_MAX_BYTES`` (the longest are cut to a
common length). A cut text keeps its head, and the message's ``cut`` entry records its full
length and the sha256 of all of it, so the row still proves what was said.
"""

from __future__ import annotations

import hashlib
from typing import Any

LEDGER_TEXT_MAX_BYTES = 16 * 1024  # one text of one message in an agent_call row
LEDGER_TEXTS_MAX_BYTES = 256 * 1024  # all the texts of one agent_call row together


def ledger_transcript(
    messages: list[dict[str, Any]],
    text_max: int = LEDGER_TEXT_MAX_BYTES,
    total_max: int = LEDGER_TEXTS_MAX_BYTES,
) -> list[dict[str, Any]]:
    """The conversation as an ``agent_call`` row keeps it: every message, each of its texts
    (strings, tool-call arguments included) cut to at most ``text_max`` bytes of UTF-8, and
    the longest cut further to one common length when all of them together pass
    ``total_max``. A cut text keeps its head; the message's ``cut`` maps the text's place
    (e.g. ``content``, ``tool_calls[0].function.arguments``) to its full length in characters
    and bytes and the sha256 of its UTF-8, so the ledger still proves what was said."""
    sizes = [len(utf8(t)) for m in messages for t in _strings(m)]
    limit = min(text_max, _level([min(s, text_max) for s in sizes], total_max))
    out = []
    for message in messages:
        cut: dict[str, Any] = {}
        kept = _cut_strings(message, limit, "", cut)
        if cut:
            kept["cut"] = cut
        out.append(kept)
    return out


def _level(sizes: list[int], budget: int) -> int:
    """The largest length L with sum(min(s, L)) <= budget: cutting every text to L spares the
    short ones and cuts the longest hardest."""
    left, count = budget, len(sizes)
    for size in sorted(sizes):
        if size * count > left:
            return left // count
        left -= size
        count -= 1
    return max(sizes, default=0)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _strings(v)]
    if isinstance(value, list):
        return [t for v in value for t in _strings(v)]
    return []


def _cut_strings(value: Any, limit: int, where: str, cut: dict[str, Any]) -> Any:
    if isinstance(value, str):
        raw = utf8(value)
        if len(raw) <= limit:
            return value
        cut[where] = {
            "chars": len(value),
            "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
        return utf8_head(value, limit)
    if isinstance(value, dict):
        return {
            k: _cut_strings(v, limit, f"{where}.{k}" if where else str(k), cut)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_cut_strings(v, limit, f"{where}[{i}]", cut) for i, v in enumerate(value)]
    return value


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # JSON from a server may hold lone surrogates


def utf8_head(text: str, max_bytes: int) -> str:
    """The longest start of ``text`` whose UTF-8 fits in ``max_bytes`` (whole characters)."""
    head = text[:max_bytes]
    while (over := len(utf8(head)) - max_bytes) > 0:
        head = head[: len(head) - max(1, over // 4)]  # a character is at most 4 bytes
    return head
