"""One child process under supervision: its output copied to a log as it comes (each line to a
hook), and killed, with everything it started, on a wall-clock deadline, on a cancel, or when
the hook asks. The trainer (mace_run_train) and code mode's sandbox both run theirs here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

LOG_TAIL_BYTES = 65536  # what a log cut at its cap keeps of the rest
# SIGKILL that nobody here sent is most often the kernel's out-of-memory killer.
SIGKILL_HINT = "out of memory? the kernel's OOM killer sends it"

# Returns True to have the process killed (say, a training loss that went non-finite).
LineHook = Callable[[str], bool | None]


@dataclass(frozen=True)
class Supervised:
    returncode: int
    ended: Literal["exited", "timeout", "cancelled", "stopped"]  # stopped: the hook asked
    seconds: float


def run_supervised(
    cmd: list[str],
    log: Path,
    *,
    wall_seconds: float,
    cancel: threading.Event | None = None,
    on_line: LineHook | None = None,
    env: dict[str, str] | None = None,
    max_log_bytes: int | None = None,
    header: str = "",
) -> Supervised:
    """Run ``cmd`` in its own process group with its output (``header`` first) in ``log``;
    whatever way it ends, nothing it started outlives it."""
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    assert proc.stdout is not None
    stop_now = threading.Event()
    reader = threading.Thread(
        target=_copy_capped,
        args=(proc.stdout, log, max_log_bytes, header.encode(), on_line, stop_now),
    )
    reader.start()
    ended: Literal["exited", "timeout", "cancelled", "stopped"] = "exited"
    deadline = start + wall_seconds
    try:
        while proc.poll() is None:
            if cancel is not None and cancel.is_set():
                ended = "cancelled"
                break
            if stop_now.is_set():
                ended = "stopped"
                break
            left = deadline - time.monotonic()
            if left <= 0:
                ended = "timeout"
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=min(left, 0.2))
    finally:
        # Also after a normal exit: nothing the program started may outlive it.
        kill_group(proc.pid)
        proc.wait()
        reader.join(timeout=10)
    return Supervised(proc.returncode, ended, time.monotonic() - start)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _copy_capped(
    stream: Any,
    log: Path,
    max_bytes: int | None,
    header: bytes,
    on_line: LineHook | None,
    stop_now: threading.Event,
) -> None:
    """Copy ``stream`` to ``log`` up to ``max_bytes``; beyond, keep only the last
    ``LOG_TAIL_BYTES``. Each line goes to ``on_line`` too, the last one even without its
    newline."""
    written, tail, pending = 0, b"", b""

    def hand_on(line: bytes) -> None:
        if on_line is None:
            return
        try:
            if on_line(line.decode("utf-8", "replace")):
                stop_now.set()
        except Exception:  # a progress hook never stops the copy
            pass

    with stream, log.open("wb") as out:
        out.write(header)
        while chunk := stream.read1(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                hand_on(line)
            if max_bytes is None or written < max_bytes:
                keep = chunk if max_bytes is None else chunk[: max_bytes - written]
                out.write(keep)
                out.flush()
                written += len(keep)
            else:
                tail = (tail + chunk)[-LOG_TAIL_BYTES:]
        if pending:
            hand_on(pending)
        if tail:
            out.write(b"\n[... log cut at %d bytes; its last 64 KiB:]\n" % (max_bytes or 0))
            out.write(tail)
