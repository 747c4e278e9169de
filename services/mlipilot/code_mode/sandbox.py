"""Run a code-mode candidate's training program in a bubblewrap sandbox.

The program is agent-written code. Inside the sandbox it sees:

- ``/sandbox/program``: a writable copy of the program folder (without ``.git``, which holds
  other candidates), its working directory;
- ``/sandbox/job.json`` (read-only): the job, with ``train_file`` and ``out_dir`` set below;
- ``/sandbox/data/train.xyz`` (read-only): the training split, and no other data;
- ``/sandbox/out``: the host ``out_dir``, where it writes model.json and weights.pt;
- read-only: ``/usr`` (and the ``/bin``, ``/lib*`` links), the Python interpreter and the
  virtual environment at their host paths, a few files of ``/etc`` the dynamic loader and
  Python read; a fresh ``/proc``, a minimal ``/dev`` and a private tmpfs ``/tmp``.

Everything else of the host (the project, the test split, scorecard specs, the ledger, other
candidates) is simply not there. It runs in its own user (uid 1000, no capabilities), network
(only its own loopback: nothing outside is reachable), PID, IPC and UTS namespaces, dies with
its parent, and is held to CPU-seconds, address-space and file-size limits plus a wall-clock
timeout that kills the whole process group. Without a working bwrap this module refuses to run
anything: a candidate never runs unsandboxed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlipilot.code_mode.model_boundary import MODEL_JSON, WEIGHTS
from mlipilot.code_mode.program_files import PROGRAM as TEMPLATE_PROGRAM
from mlipilot.errors import MlipilotError
from mlipilot.process_globals import GLOBALS_LOCK

PROGRAM = Path(TEMPLATE_PROGRAM)  # the file the sandbox runs, relative to the program folder
INSIDE = Path("/sandbox")
PROGRAM_INSIDE = INSIDE / "program"
JOB_INSIDE = INSIDE / "job.json"
TRAIN_INSIDE = INSIDE / "data" / "train.xyz"
OUT_INSIDE = INSIDE / "out"
LOG_NAME = "program.log"
SANDBOX_UID = 1000
# Files of /etc that the dynamic loader, Python and libc read; nothing else of /etc is bound.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "fonts")
INSTALL_HINT = (
    "code mode runs candidate programs only under bubblewrap; install it "
    "(Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
)

Status = Literal["ok", "syntax_error", "exception", "timeout", "killed", "no_model", "cancelled"]


class SandboxError(MlipilotError):
    """The sandbox cannot be set up (no bwrap, bad arguments); no program was run."""


class SandboxLimits(BaseModel):
    """Resources one candidate's program may use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_seconds: float = Field(3600.0, gt=0, description="then the process group is killed")
    cpu_seconds: int = Field(4 * 3600, ge=1, description="RLIMIT_CPU of each process")
    memory_bytes: int | None = Field(
        8 << 30,
        ge=256 << 20,
        description="RLIMIT_AS of each process; None for none (CUDA reserves vast address space)",
    )
    file_bytes: int = Field(1 << 30, ge=1 << 20, description="RLIMIT_FSIZE: largest file")
    tmp_bytes: int = Field(256 << 20, ge=1 << 20, description="size of the private /tmp")
    threads: int = Field(1, ge=1, le=256, description="OMP/MKL/OpenBLAS threads")
    log_bytes: int = Field(8 << 20, ge=4096, description="program.log keeps this much")
    log_tail_lines: int = Field(40, ge=1, le=1000)


class SandboxResult(BaseModel):
    status: Status
    returncode: int | None  # None when the program never ran (syntax error)
    seconds: float
    log_tail: str  # the last lines of combined stdout and stderr
    log_path: Path
    out_dir: Path


def find_bwrap() -> str:
    """The bwrap executable, checked to set up this module's namespaces; else SandboxError."""
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError(f"bwrap (bubblewrap) not found on PATH: {INSTALL_HINT}")
    problem = _probe(path)
    if problem:
        raise SandboxError(
            f"{path} cannot create the sandbox here ({problem}): it needs user, network, PID "
            "and mount namespaces (in a container: allow unshare, e.g. a seccomp profile that "
            f"permits it, or run the sandbox on the host); {INSTALL_HINT}"
        )
    return path


@cache
def _probe(bwrap: str) -> str | None:
    probe = [bwrap, *_NAMESPACES, "--ro-bind", "/", "/", "--", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


_NAMESPACES = (
    "--unshare-user",
    "--uid",
    str(SANDBOX_UID),
    "--gid",
    str(SANDBOX_UID),
    "--disable-userns",
    "--unshare-net",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--cap-drop",
    "ALL",
    "--die-with-parent",
)


def interpreter_paths(python: Path) -> list[Path]:
    """Host folders the interpreter needs: its virtual environment and its installation."""
    real = Path(os.path.realpath(python))
    probe = subprocess.run(
        [str(python), "-I", "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    prefix, base = (Path(p) for p in probe.stdout.split())
    roots = [prefix, base, real.parent.parent]
    kept: list[Path] = []
    for root in sorted({Path(os.path.realpath(r)) for r in roots} | set(roots)):
        if root.is_relative_to("/usr") or any(root.is_relative_to(k) for k in kept):
            continue  # /usr is bound anyway
        kept.append(root)
    return kept


def bwrap_args(
    *,
    bwrap: str,
    python: Path,
    work: Path,
    train_file: Path,
    out_dir: Path,
    limits: SandboxLimits,
) -> list[str]:
    """The bwrap command line that runs ``python training/program.py /sandbox/job.json``."""
    args = [bwrap, *_NAMESPACES, "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = Path("/") / name
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # /tmp first: an interpreter or virtual environment under /tmp is bound on top of it.
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    for root in interpreter_paths(python):
        args += ["--ro-bind", str(root), str(root)]
    args += ["--bind", str(work / "program"), str(PROGRAM_INSIDE)]
    args += ["--ro-bind", str(work / "job.json"), str(JOB_INSIDE)]
    args += ["--ro-bind", str(train_file), str(TRAIN_INSIDE)]
    args += ["--bind", str(out_dir), str(OUT_INSIDE)]
    args += ["--remount-ro", "/", "--chdir", str(PROGRAM_INSIDE), "--clearenv"]
    for key, value in _environment(python, limits).items():
        args += ["--setenv", key, value]
    return [*args, "--", str(python), str(PROGRAM), str(JOB_INSIDE)]


def _environment(python: Path, limits: SandboxLimits) -> dict[str, str]:
    threads = str(limits.threads)
    return {
        "PATH": f"{Path(python).parent}:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }


# The launcher: a fresh interpreter that sets the resource limits and asks Linux to SIGKILL it
# when its parent dies, then becomes bwrap (limits and the death signal survive exec). Done
# after exec rather than in a preexec_fn, which is unsafe in a process with threads.
_LAUNCHER = (
    "import ctypes, json, os, resource, sys; ctypes.CDLL(None).prctl(1, 9); "
    "os.getppid() == int(sys.argv[1]) or sys.exit(137); "
    "[resource.setrlimit(getattr(resource, k), v) for k, v in json.loads(sys.argv[2])]; "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


def _launcher(cmd: list[str], limits: SandboxLimits) -> list[str]:
    rlimits = [  # (soft, hard): SIGXCPU at the soft CPU limit, SIGKILL a few seconds later
        ("RLIMIT_CPU", (limits.cpu_seconds, limits.cpu_seconds + 5)),
        ("RLIMIT_FSIZE", (limits.file_bytes, limits.file_bytes)),
        ("RLIMIT_CORE", (0, 0)),
    ]
    if limits.memory_bytes is not None:
        rlimits.append(("RLIMIT_AS", (limits.memory_bytes, limits.memory_bytes)))
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER]
    return [*launcher, str(os.getpid()), json.dumps(rlimits), *cmd]


def run_sandboxed(
    program_dir: Path,
    job: Mapping[str, Any],
    train_file: Path,
    out_dir: Path,
    limits: SandboxLimits,
    *,
    python: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
) -> SandboxResult:
    """Run ``training/program.py`` of ``program_dir`` on ``job`` in the sandbox; never raises
    for what the program does, only when the sandbox cannot be set up (SandboxError).

    ``out_dir`` must be empty or absent; the program's combined output ends up in
    ``out_dir/program.log``. ``python`` (default: this interpreter) runs the program.
    ``on_line`` sees each line of output as it comes (progress); setting ``cancel`` kills the
    program's process group (status ``cancelled``).
    """
    program_dir, train_file, out_dir = Path(program_dir), Path(train_file), Path(out_dir)
    python = Path(python or sys.executable)
    _check_inputs(program_dir, job, train_file, out_dir)
    bwrap = find_bwrap()
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlipilot-sandbox-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        log = work / LOG_NAME
        syntax = _syntax_error(program_dir / PROGRAM)
        if syntax is not None:
            log.write_text(syntax + "\n")
            return _result("syntax_error", None, start, log, out_dir, limits)
        shutil.copytree(program_dir, work / "program", symlinks=True, ignore=_no_git)
        inside_job = {**job, "train_file": str(TRAIN_INSIDE), "out_dir": str(OUT_INSIDE)}
        (work / "job.json").write_text(json.dumps(inside_job, indent=1))
        cmd = bwrap_args(
            bwrap=bwrap,
            python=python,
            work=work,
            train_file=train_file.resolve(),
            out_dir=out_dir.resolve(),
            limits=limits,
        )
        returncode, ended = _run(_launcher(cmd, limits), log, limits, on_line, cancel)
        if ended == "cancelled":
            status: Status = "cancelled"
        elif ended == "timeout":
            status = "timeout"
        elif returncode > 128 or returncode < 0:  # bwrap reports death by signal N as 128 + N
            status = "killed"
        elif returncode != 0:
            status = "exception"
        elif (out_dir / MODEL_JSON).exists() and (out_dir / WEIGHTS).exists():
            status = "ok"
        else:
            status = "no_model"
        _note(log, status, returncode, limits)
        return _result(status, returncode, start, log, out_dir, limits)


def _check_inputs(
    program_dir: Path, job: Mapping[str, Any], train_file: Path, out_dir: Path
) -> None:
    if not (program_dir / PROGRAM).is_file():
        raise SandboxError(f"{program_dir}: no {PROGRAM} to run")
    if not train_file.is_file():
        raise SandboxError(f"{train_file}: training split not found")
    taken = sorted({"train_file", "out_dir"} & set(job))
    if taken:
        raise SandboxError(f"job: {taken} are set by the sandbox, leave them out")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SandboxError(f"{out_dir}: the out folder must be empty or absent")
    try:
        json.dumps(dict(job), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SandboxError(f"job: not plain JSON: {exc}") from None


def _no_git(folder: str, names: list[str]) -> list[str]:
    return [".git"] if ".git" in names else []


def _syntax_error(path: Path) -> str | None:
    """The syntax error of the editable file (with its line), or None when it compiles."""
    try:
        with GLOBALS_LOCK:
            compile(path.read_bytes(), str(PROGRAM), "exec", dont_inherit=True)
    except SyntaxError as exc:
        text = (exc.text or "").rstrip()
        return f"SyntaxError: {PROGRAM}, line {exc.lineno}: {exc.msg}" + (
            f"\n    {text}" if text else ""
        )
    except ValueError as exc:  # null bytes
        return f"SyntaxError: {PROGRAM}: {exc}"
    return None


def _run(
    cmd: list[str],
    log: Path,
    limits: SandboxLimits,
    on_line: Callable[[str], None] | None,
    cancel: threading.Event | None,
) -> tuple[int, Literal["exited", "timeout", "cancelled"]]:
    """Run ``cmd`` in its own process group, its output into ``log``; (returncode, how it
    ended)."""
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    reader = threading.Thread(
        target=_copy_capped, args=(proc.stdout, log, limits.log_bytes, on_line)
    )
    reader.start()
    ended: Literal["exited", "timeout", "cancelled"] = "exited"
    deadline = time.monotonic() + limits.wall_seconds
    try:
        while proc.poll() is None:
            if cancel is not None and cancel.is_set():
                ended = "cancelled"
                break
            left = deadline - time.monotonic()
            if left <= 0:
                ended = "timeout"
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=min(left, 0.2))
    finally:
        # Also after a normal exit: nothing the program started may outlive it.
        _kill_group(proc.pid)
        proc.wait()
        reader.join(timeout=10)
    return proc.returncode, ended


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _copy_capped(
    stream: Any, log: Path, max_bytes: int, on_line: Callable[[str], None] | None = None
) -> None:
    """Copy ``stream`` to ``log`` up to ``max_bytes``; beyond, keep only the last 64 KiB.
    Each complete line goes to ``on_line`` too."""
    written, tail, pending = 0, b"", b""
    with stream, log.open("wb") as out:
        while chunk := stream.read1(65536):
            if on_line is not None:
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    with contextlib.suppress(Exception):  # a progress hook never stops the copy
                        on_line(line.decode("utf-8", "replace"))
            if written < max_bytes:
                out.write(chunk[: max_bytes - written])
                written += min(len(chunk), max_bytes - written)
            else:
                tail = (tail + chunk)[-65536:]
        if tail:
            out.write(b"\n[... program.log cut at %d bytes; its last 64 KiB:]\n" % max_bytes)
            out.write(tail)


_SIGNAL_HINTS = {
    "SIGXCPU": "over the CPU-seconds limit",
    "SIGKILL": "killed (out of memory? the kernel's OOM killer sends it)",
    "SIGXFSZ": "wrote a file over the file-size limit",
}


def _note(log: Path, status: Status, returncode: int, limits: SandboxLimits) -> None:
    """A last line in the log saying why the run ended, when it did not end well."""
    if status == "timeout":
        note = f"over the wall-clock limit of {limits.wall_seconds:g} s: killed"
    elif status == "killed":
        signum = returncode - 128 if returncode > 128 else -returncode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        note = f"killed by {name}: {_SIGNAL_HINTS.get(name, 'ended by a signal')}"
    elif status == "cancelled":
        note = "stopped: the campaign was cancelled"
    elif status == "no_model":
        note = f"exited 0 without writing {MODEL_JSON} and {WEIGHTS}"
    else:
        return
    with log.open("a") as fh:
        fh.write(f"\nsandbox: {status}: {note}\n")


def _result(
    status: Status,
    returncode: int | None,
    start: float,
    log: Path,
    out_dir: Path,
    limits: SandboxLimits,
) -> SandboxResult:
    """Put the log in ``out_dir`` (replacing whatever the program left under that name)."""
    dest = out_dir / LOG_NAME
    if dest.is_symlink() or dest.is_file():  # never follow a link the program planted
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    raw = log.read_bytes()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    lines = raw[-65536:].decode(errors="replace").splitlines()
    return SandboxResult(
        status=status,
        returncode=returncode,
        seconds=time.monotonic() - start,
        log_tail="\n".join(lines[-limits.log_tail_lines :]),
        log_path=dest,
        out_dir=out_dir,
    )
