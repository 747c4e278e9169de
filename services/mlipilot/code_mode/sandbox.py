"""Run a code-mode candidate's training program in a bubblewrap sandbox.

The program is agent-written code. Inside the sandbox it sees:

- ``/sandbox/program``: a writable copy of the program folder (without ``.git``, which holds
  other candidates), its working directory;
- ``/sandbox/job.json`` (read-only): the job, with ``train_file`` and ``out_dir`` set below;
- ``/sandbox/data/train.xyz`` (read-only): the training split, and no other data;
- ``/sandbox/out``: a private folder in the sandbox's own temporary work folder (mode 0700,
  never the campaign's run folder), where it writes model.json and weights.pt;
- read-only: ``/usr`` (and the ``/bin``, ``/lib*`` links), the Python interpreter and the
  virtual environment at their host paths, a few files of ``/etc`` the dynamic loader and
  Python read; a fresh ``/proc``, a minimal ``/dev`` (with, for a GPU training, the device
  nodes of the GPUs this process was given: ``gpus.py``) and a private tmpfs ``/tmp``.

Everything else of the host (the project, the test split, scorecard specs, the ledger, other
candidates) is simply not there. It runs in its own user (uid 1000, no capabilities; on the
host its files belong to the user running the campaign), network (only its own loopback:
nothing outside is reachable), PID, IPC and UTS namespaces, dies with its parent, and is held
to CPU-seconds, address-space and file-size limits, a count of processes and threads, a memory
limit for all its processes together, and a wall-clock timeout that kills the whole process
group.

The process count and memory limits use a cgroup of the run's own where one is writable, else
rlimits (``cgroups`` says how and where); the launcher joins the cgroup before it becomes bwrap,
or exits saying why: nothing of the program runs outside it.
``SandboxResult.limits_enforced_by`` records which mechanism ran.

Only two files come out, into the caller's ``out_dir``: ``model.json`` and ``weights.pt``,
taken with care by ``leftovers``, which also removes everything else the program left with the
work folder. ``program.log`` there is written by the host, from the output it captured through
a pipe. Without a working bwrap this module refuses to run anything: a candidate never runs
unsandboxed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from mlipilot.code_mode import cgroups
from mlipilot.code_mode.gpus import gpu_device_nodes
from mlipilot.code_mode.leftovers import remove_work, take_outputs
from mlipilot.code_mode.model_boundary import MODEL_JSON, WEIGHTS
from mlipilot.code_mode.program_files import PROGRAM as TEMPLATE_PROGRAM
from mlipilot.code_mode.sandbox_models import LimitHit, SandboxLimits, SandboxResult, Status
from mlipilot.errors import MlipilotError
from mlipilot.process_globals import GLOBALS_LOCK
from mlipilot.supervised import SIGKILL_HINT, run_supervised, signal_name

PROGRAM = Path(TEMPLATE_PROGRAM)  # the file the sandbox runs, relative to the program folder
INSIDE = Path("/sandbox")
PROGRAM_INSIDE = INSIDE / "program"
JOB_INSIDE = INSIDE / "job.json"
TRAIN_INSIDE = INSIDE / "data" / "train.xyz"
OUT_INSIDE = INSIDE / "out"
OUT_FOLDER = "out"  # the program's private out folder, in the sandbox's work folder
LOG_NAME = "program.log"
SANDBOX_UID = 1000
# Files of /etc that the dynamic loader, Python and libc read; nothing else of /etc is bound.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "fonts")
INSTALL_HINT = (
    "code mode runs candidate programs only under bubblewrap; install it "
    "(Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
)


class SandboxError(MlipilotError):
    """The sandbox cannot be set up (no bwrap, bad arguments); no program was run."""


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
    limits: SandboxLimits,
    gpu_nodes: Sequence[Path] = (),
) -> list[str]:
    """The bwrap command line that runs ``python training/program.py /sandbox/job.json``.

    ``work`` is the sandbox's private work folder: ``work/program`` becomes the program's
    folder and ``work/out`` its out folder; nothing of the caller's is bound writable.
    ``gpu_nodes`` (``gpus.gpu_device_nodes``) are bound into ``/dev`` for a GPU training."""
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
    for node in gpu_nodes:  # the GPUs it was given, and NVIDIA's control nodes: no other
        args += ["--dev-bind", str(node), str(node)]
    args += ["--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    for root in interpreter_paths(python):
        args += ["--ro-bind", str(root), str(root)]
    args += ["--bind", str(work / "program"), str(PROGRAM_INSIDE)]
    args += ["--ro-bind", str(work / "job.json"), str(JOB_INSIDE)]
    args += ["--ro-bind", str(train_file), str(TRAIN_INSIDE)]
    args += ["--bind", str(work / OUT_FOLDER), str(OUT_INSIDE)]
    args += ["--remount-ro", "/", "--chdir", str(PROGRAM_INSIDE), "--clearenv"]
    env = _environment(python, limits)
    if gpu_nodes and "CUDA_VISIBLE_DEVICES" in os.environ:  # the same GPUs, the same numbers
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    for key, value in env.items():
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


# The launcher: a fresh interpreter that asks Linux to SIGKILL it when its parent dies, joins
# the run's cgroup(s) (or exits saying why: it never runs the program outside them), sets the
# resource limits, then becomes bwrap (cgroup, limits and the death signal survive exec). Done
# after exec rather than in a preexec_fn, which is unsafe in a process with threads.
_LAUNCHER = """
import ctypes, json, os, resource, sys
ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG: SIGKILL
if os.getppid() != int(sys.argv[1]):
    sys.exit(137)  # the parent died before the line above
for procs in json.loads(sys.argv[3]):
    try:
        fd = os.open(procs, os.O_WRONLY)
        os.write(fd, b"%d" % os.getpid())
        os.close(fd)
    except OSError as exc:
        sys.exit(f"sandbox: cannot join the run's cgroup ({procs}: {exc.strerror}); nothing ran")
for name, value in json.loads(sys.argv[2]):
    resource.setrlimit(getattr(resource, name), value)
os.execv(sys.argv[4], sys.argv[4:])
"""


def launcher_args(
    cmd: list[str],
    limits: SandboxLimits,
    cgroup_procs: list[str],
    nproc: int | None,
    gpu: bool = False,
) -> list[str]:
    """The launcher's command line: it joins ``cgroup_procs`` (the run's ``cgroup.procs``
    files), sets the rlimits (RLIMIT_NPROC to ``nproc`` unless None), then execs ``cmd``.
    With ``gpu`` no address-space limit: CUDA reserves far more address space than it uses
    (the memory cgroup, where there is one, still limits what is used)."""
    rlimits: list[tuple[str, tuple[int, int]]] = [
        # (soft, hard): SIGXCPU at the soft CPU limit, SIGKILL a few seconds later
        ("RLIMIT_CPU", (limits.cpu_seconds, limits.cpu_seconds + 5)),
        ("RLIMIT_FSIZE", (limits.file_bytes, limits.file_bytes)),
        ("RLIMIT_CORE", (0, 0)),
    ]
    if limits.memory_bytes is not None and not gpu:
        rlimits.append(("RLIMIT_AS", (limits.memory_bytes, limits.memory_bytes)))
    if nproc is not None:
        rlimits.append(("RLIMIT_NPROC", (nproc, nproc)))
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER]
    return [*launcher, str(os.getpid()), json.dumps(rlimits), json.dumps(cgroup_procs), *cmd]


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
    device: str = "cpu",
) -> SandboxResult:
    """Run ``training/program.py`` of ``program_dir`` on ``job`` in the sandbox; never raises
    for what the program does, only when the sandbox cannot be set up (SandboxError).

    ``out_dir`` must be empty or absent; it receives ``model.json`` and ``weights.pt`` when the
    program exits 0 having written them as regular files within the size limits, and always
    ``program.log``, the program's combined output. The program never sees ``out_dir`` itself.
    ``python`` (default: this interpreter) runs the program. ``on_line`` sees each line of
    output as it comes (progress); setting ``cancel`` kills the program's process group
    (status ``cancelled``). ``device`` ``cuda``: the GPUs this process was given are bound
    in (``gpus.py``) and the job says ``device: cuda``; else the program sees no GPU.
    """
    program_dir, train_file, out_dir = Path(program_dir), Path(train_file), Path(out_dir)
    python = Path(python or sys.executable)
    _check_inputs(program_dir, job, train_file, out_dir)
    bwrap = find_bwrap()
    try:
        nodes = gpu_device_nodes(os.environ.get("CUDA_VISIBLE_DEVICES")) if device == "cuda" else []
    except MlipilotError as exc:
        raise SandboxError(f"device cuda: {exc}") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    # Mode 0700 and owned by us: what the program leaves here (its files are ours on the host,
    # setuid ones included) is out of every other user's reach until remove_tree deletes it.
    work = Path(tempfile.mkdtemp(prefix="mlipilot-sandbox-"))
    try:
        log = work / LOG_NAME
        syntax = _syntax_error(program_dir / PROGRAM)
        if syntax is not None:
            log.write_text(syntax + "\n")
            return _result("syntax_error", None, start, log, out_dir, limits)
        shutil.copytree(program_dir, work / "program", symlinks=True, ignore=_no_git)
        (work / OUT_FOLDER).mkdir(mode=0o700)
        inside_job = {**job, "train_file": str(TRAIN_INSIDE), "out_dir": str(OUT_INSIDE)}
        if nodes:  # only then: a program of an older campaign, on the CPU, knows no "device"
            inside_job["device"] = "cuda"
        (work / "job.json").write_text(json.dumps(inside_job, indent=1))
        cmd = bwrap_args(
            bwrap=bwrap,
            python=python,
            work=work,
            train_file=train_file.resolve(),
            limits=limits,
            gpu_nodes=nodes,
        )
        cgroup = cgroups.make_cgroup(limits)
        nproc = None if cgroup is not None else cgroups.nproc_limit(limits)
        procs = cgroup.procs_files() if cgroup is not None else []
        hits: list[tuple[LimitHit, str]] = []
        try:
            launcher = launcher_args(cmd, limits, procs, nproc, gpu=bool(nodes))
            ran = run_supervised(
                launcher,
                log,
                wall_seconds=limits.wall_seconds,
                cancel=cancel,
                on_line=on_line,
                max_log_bytes=limits.log_bytes,
            )
            returncode, ended = ran.returncode, ran.ended
        finally:
            if cgroup is not None:  # also kills whatever of the program is left
                hits = cgroup.close(limits)
        refused = None
        if ended == "cancelled":
            status: Status = "cancelled"
        elif ended == "timeout":
            status = "timeout"
        elif returncode > 128 or returncode < 0:  # bwrap reports death by signal N as 128 + N
            status = "killed"
        elif returncode != 0:
            status = "exception"
        else:
            status, refused = take_outputs(work / OUT_FOLDER, out_dir, limits)
        enforced = cgroup is not None or nproc is not None
        _note(log, status, returncode, limits, refused, hits, process_limit=enforced)
        return _result(
            status,
            returncode,
            start,
            log,
            out_dir,
            limits,
            limits_enforced_by=cgroup.kind if cgroup is not None else "rlimit",
            process_limit_enforced=enforced,
            limits_hit=[kind for kind, _ in hits],
        )
    finally:
        remove_work(work)


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


# ---- the log's last word ----


_SIGNAL_HINTS = {
    "SIGXCPU": "over the CPU-seconds limit",
    "SIGKILL": f"killed ({SIGKILL_HINT})",
    "SIGXFSZ": "wrote a file over the file-size limit",
}


def _note(
    log: Path,
    status: Status,
    returncode: int,
    limits: SandboxLimits,
    refused: str | None,
    hits: list[tuple[LimitHit, str]],
    *,
    process_limit: bool,
) -> None:
    """Last lines in the log: limits the run hit or that did not hold, and why the run ended
    when it did not end well."""
    lines = []
    if not process_limit:
        lines.append(
            "the process count was not limited: no writable cgroup here, and the kernel "
            "exempts uid 0 from RLIMIT_NPROC (run the campaign as another user, or give it a "
            f"cgroup v2 folder with pids and memory delegated in {cgroups.CGROUP_ENV})"
        )
    lines += [text for _, text in hits]
    note = None
    if status == "timeout":
        note = f"over the wall-clock limit of {limits.wall_seconds:g} s: killed"
    elif status == "killed":
        signum = returncode - 128 if returncode > 128 else -returncode
        name = signal_name(signum)
        hint = _SIGNAL_HINTS.get(name, "ended by a signal")
        if name == "SIGKILL" and any(kind == "memory" for kind, _ in hits):
            hint = "over the memory limit"
        note = f"killed by {name}: {hint}"
    elif status == "cancelled":
        note = "stopped: the campaign was cancelled"
    elif status == "no_model":
        note = f"exited 0 without writing {MODEL_JSON} and {WEIGHTS}"
    elif status == "output_refused":
        note = refused
    if note is not None:
        lines.append(f"{status}: {note}")
    if lines:
        with log.open("a") as fh:
            fh.write("\n" + "".join(f"sandbox: {line}\n" for line in lines))


def _result(
    status: Status,
    returncode: int | None,
    start: float,
    log: Path,
    out_dir: Path,
    limits: SandboxLimits,
    **limits_record: Any,
) -> SandboxResult:
    """Write the log into ``out_dir`` (which only the host writes) and describe the run."""
    dest = out_dir / LOG_NAME
    raw = log.read_bytes()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o644)
        fh.write(raw)
    lines = raw[-65536:].decode(errors="replace").splitlines()
    return SandboxResult(
        status=status,
        returncode=returncode,
        seconds=time.monotonic() - start,
        log_tail="\n".join(lines[-limits.log_tail_lines :]),
        log_path=dest,
        out_dir=out_dir,
        **limits_record,
    )
