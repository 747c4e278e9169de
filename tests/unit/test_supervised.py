"""The supervised child process the trainer and the sandbox share: real child processes."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from mlipilot.supervised import run_supervised

PY = sys.executable


def test_the_hook_sees_every_line_and_can_stop_the_run(tmp_path: Path) -> None:
    seen: list[str] = []
    script = (
        "import time\nfor i in range(1000):\n    print(f'line {i}', flush=True); time.sleep(0.01)"
    )

    def hook(line: str) -> bool:
        seen.append(line)
        return line == "line 3"

    ran = run_supervised([PY, "-c", script], tmp_path / "log", wall_seconds=60, on_line=hook)
    assert ran.ended == "stopped" and ran.returncode != 0
    assert seen[:4] == ["line 0", "line 1", "line 2", "line 3"]
    assert len(seen) < 1000


def test_the_last_line_reaches_the_hook_without_its_newline(tmp_path: Path) -> None:
    seen: list[str] = []
    cmd = [PY, "-c", "import sys; sys.stdout.write('first\\nlast')"]
    ran = run_supervised(
        cmd, tmp_path / "log", wall_seconds=60, on_line=seen.append, header="$ x\n"
    )
    assert (ran.ended, ran.returncode) == ("exited", 0)
    assert seen == ["first", "last"]
    assert (tmp_path / "log").read_text() == "$ x\nfirst\nlast"


def test_a_long_log_keeps_its_head_and_its_tail(tmp_path: Path) -> None:
    script = "import sys\nfor i in range(20000):\n    print(f'{i:08d}')\nprint('the end')"
    run_supervised([PY, "-c", script], tmp_path / "log", wall_seconds=60, max_log_bytes=4096)
    text = (tmp_path / "log").read_text()
    assert text.startswith("00000000\n00000001\n")
    assert "log cut at 4096 bytes" in text and text.endswith("the end\n")
    assert len(text) < 4096 + 65536 + 200


def test_deadline_and_cancel_kill_the_child_and_what_it_started(tmp_path: Path) -> None:
    # The child starts a grandchild that would outlive it; both go with the process group.
    marker = tmp_path / "grandchild-alive"
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w')\n")
    child = tmp_path / "child.py"
    child.write_text(
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, {str(grandchild)!r}])\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    script = child.read_text()
    start = time.monotonic()
    ran = run_supervised([PY, "-c", script], tmp_path / "log", wall_seconds=1.0)
    assert ran.ended == "timeout" and time.monotonic() - start < 10
    cancel = threading.Event()  # set once the grandchild has been started

    def on_line(line: str) -> None:
        if line == "started":
            cancel.set()

    ran = run_supervised(
        [PY, "-c", script], tmp_path / "log2", wall_seconds=60, cancel=cancel, on_line=on_line
    )
    assert ran.ended == "cancelled"
    time.sleep(3.5)
    assert not marker.exists()  # no grandchild lived to write it
