"""The process and memory limits of one sandbox run: a cgroup of its own, else rlimits.

The process count and memory limits use a cgroup of the run's own where one is writable: cgroup
v2 under the folder named by ``MLIPILOT_SANDBOX_CGROUP`` or else under this process's own
cgroup, when ``pids`` and ``memory`` are in its ``cgroup.subtree_control`` (a delegated
subtree; the kernel lets a process move into a cgroup only where it may write the
``cgroup.procs`` of both cgroups' common ancestor, so name a folder inside the campaign's own
delegated subtree); else cgroup v1, a child of this process's ``pids`` and ``memory`` cgroups
(root can). The sandbox's launcher joins it before it becomes bwrap, or exits saying why:
nothing of the program runs outside it. After the run whatever is left in it is killed and it
is removed. Without a writable cgroup, RLIMIT_NPROC bounds the processes (the kernel counts all
of the host user's, so the limit is what runs now plus ``max_processes``) and RLIMIT_AS each
process's memory; the kernel exempts uid 0 from RLIMIT_NPROC, so as root without a cgroup the
process count is not limited, and the result and program.log say so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlipilot.code_mode.sandbox_models import LimitHit, SandboxLimits

CGROUP_ENV = "MLIPILOT_SANDBOX_CGROUP"  # a delegated cgroup v2 folder for the runs' cgroups
CGROUP_PREFIX = "mlipilot-sandbox-"

_logger = logging.getLogger(__name__)


def cgroup_folders(proc_cgroup: str, mountinfo: str) -> tuple[Path | None, dict[str, Path]]:
    """Where this process is in each cgroup hierarchy mounted here, from the texts of
    /proc/self/cgroup and /proc/self/mountinfo: (its cgroup v2 folder or None, {cgroup v1
    controller: its folder})."""
    mounts: list[tuple[str, str, Path, set[str]]] = []  # (fs type, root, mount point, options)
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 4 or fields[sep + 1] not in ("cgroup", "cgroup2"):
            continue
        root, point = (_unescape(f) for f in fields[3:5])
        mounts.append((fields[sep + 1], root, Path(point), set(fields[sep + 3].split(","))))
    v2: Path | None = None
    v1: dict[str, Path] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        for kind, mount_root, mount_point, options in mounts:
            folder = _folder_in(mount_root, mount_point, path)
            if folder is None:
                continue
            if hierarchy == "0" and not controllers and kind == "cgroup2":
                v2 = v2 or folder
            elif kind == "cgroup":
                for controller in controllers.split(","):
                    if controller and controller in options:
                        v1.setdefault(controller, folder)
    return v2, v1


def _folder_in(root: str, point: Path, path: str) -> Path | None:
    """The folder of cgroup ``path`` under a mount of the hierarchy's ``root`` at ``point``."""
    if root == "/":
        return point / path.lstrip("/")
    if path == root or path.startswith(root + "/"):
        return point / path[len(root) :].lstrip("/")
    return None


def _unescape(field: str) -> str:
    """A path from /proc/self/mountinfo, which writes space, tab, newline and \\ as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Cgroup:
    """One run's cgroup: its folder for each controller (cgroup v2: one folder for all)."""

    kind: Literal["cgroup-v1", "cgroup-v2"]
    folders: dict[str, Path]  # "pids", and "memory" when memory is limited

    def procs_files(self) -> list[str]:
        return [str(f / "cgroup.procs") for f in dict.fromkeys(self.folders.values())]

    def close(self, limits: SandboxLimits) -> list[tuple[LimitHit, str]]:
        """Kill whatever is left in the cgroup, remove it; the limits the run hit."""
        hits = self._hits(limits)  # before the kill: pids.max=0 below counts refused forks too
        name = self.folders["pids"].name
        with contextlib.suppress(OSError):  # what is left can no longer fork while it is killed
            (self.folders["pids"] / "pids.max").write_text("0")
        if self.kind == "cgroup-v2":
            with contextlib.suppress(OSError):  # Linux 5.14+
                (self.folders["pids"] / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 10
        while (left := self._members()) and time.monotonic() < deadline:
            for pid in left:
                _kill_member(pid, name)
            time.sleep(0.01)
        for folder in dict.fromkeys(self.folders.values()):
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:  # EBUSY until the last process is gone
                    if time.monotonic() >= deadline:
                        _logger.warning("could not remove the sandbox's cgroup %s: %s", folder, exc)
                        break
                    time.sleep(0.02)
        return hits

    def _members(self) -> set[int]:
        pids: set[int] = set()
        for procs in self.procs_files():
            with contextlib.suppress(OSError, ValueError):
                pids |= {int(p) for p in Path(procs).read_text().split()}
        return pids

    def _hits(self, limits: SandboxLimits) -> list[tuple[LimitHit, str]]:
        hits: list[tuple[LimitHit, str]] = []
        refused = _counter(self.folders["pids"] / "pids.events", "max")
        if refused:
            hits.append(
                (
                    "processes",
                    f"the process limit ({limits.max_processes} processes and threads at once, "
                    f"SandboxLimits.max_processes) refused {refused} new one(s)",
                )
            )
        if "memory" in self.folders and limits.memory_bytes is not None:
            events = "memory.events" if self.kind == "cgroup-v2" else "memory.oom_control"
            killed = _counter(self.folders["memory"] / events, "oom_kill")
            if killed:
                hits.append(
                    (
                        "memory",
                        f"the memory limit ({limits.memory_bytes >> 20} MiB for all its processes "
                        f"together, SandboxLimits.memory_bytes) was hit: the kernel killed "
                        f"{killed} of its processes",
                    )
                )
        return hits


def _counter(path: Path, key: str) -> int:
    """The value of ``key`` in a cgroup file of ``key value`` lines (pids.events, ...); 0 if
    absent."""
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    return 0


def _kill_member(pid: int, cgroup_name: str) -> None:
    """SIGKILL ``pid`` if it is still in the run's cgroup: the pidfd pins the process, so a
    pid reused since cgroup.procs was read is never signalled."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # gone
    try:
        if cgroup_name in Path(f"/proc/{pid}/cgroup").read_text():
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def make_cgroup(limits: SandboxLimits) -> Cgroup | None:
    """A new cgroup for one run with its process and memory limits set; None where none is
    writable (or the controllers are not there)."""
    try:
        v2, v1 = cgroup_folders(
            Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text()
        )
    except OSError:
        return None
    need = ["pids"] + (["memory"] if limits.memory_bytes is not None else [])
    name = f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    parent = Path(os.environ[CGROUP_ENV]) if os.environ.get(CGROUP_ENV) else v2
    if parent is not None:
        try:
            delegated = set((parent / "cgroup.subtree_control").read_text().split())
        except OSError:
            delegated = set()
        if delegated >= set(need):
            settings = [("pids.max", str(limits.max_processes))]
            if limits.memory_bytes is not None:
                settings += [
                    ("memory.max", str(limits.memory_bytes)),
                    ("memory.swap.max", "0"),
                    ("memory.oom.group", "1"),  # an OOM kill takes the whole run, not one part
                ]
            folder = parent / name
            made = _made("cgroup-v2", dict.fromkeys(need, folder), settings)
            if made is not None:
                return made
    if all(c in v1 for c in need):
        folders = {c: v1[c] / name for c in need}
        v1_settings = [("pids.max", str(limits.max_processes))]
        if limits.memory_bytes is not None:  # memsw (memory + swap) after the memory limit
            v1_settings += [
                ("memory.limit_in_bytes", str(limits.memory_bytes)),
                ("memory.memsw.limit_in_bytes", str(limits.memory_bytes)),
            ]
        return _made("cgroup-v1", folders, v1_settings)
    return None


# Absent without swap accounting or on older kernels: the rest still holds.
_OPTIONAL = {"memory.swap.max", "memory.oom.group", "memory.memsw.limit_in_bytes"}


def _made(
    kind: Literal["cgroup-v1", "cgroup-v2"],
    folders: dict[str, Path],
    settings: list[tuple[str, str]],
) -> Cgroup | None:
    """Make the cgroup folders and write ``settings`` (file, value) into the one holding each
    file; None, with nothing left behind, if any of it fails."""
    made: list[Path] = []
    try:
        for folder in dict.fromkeys(folders.values()):
            folder.mkdir()
            made.append(folder)
        for file, value in settings:
            target = folders[file.split(".", 1)[0]] / file
            if file in _OPTIONAL and not target.exists():
                continue
            target.write_text(value)
    except OSError as exc:
        _logger.debug("no %s cgroup for the sandbox: %s", kind, exc)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        return None
    return Cgroup(kind, folders)


def nproc_limit(limits: SandboxLimits) -> int | None:
    """RLIMIT_NPROC for a run without a cgroup; None where the kernel would not enforce it
    (our uid is the host's uid 0)."""
    if _host_uid() == 0:
        return None
    # The kernel counts every task (thread) of the host user, in the sandbox or not, against
    # the limit: leave room for those running now.
    return limits.max_processes + _tasks_of(os.getuid())


def _host_uid() -> int:
    """Our real uid as the kernel's initial user namespace sees it (/proc/self/uid_map)."""
    uid = os.getuid()
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/uid_map").read_text().splitlines():
            inside, outside, count = (int(f) for f in line.split())
            if inside <= uid < inside + count:
                return outside + uid - inside
    return uid


def _tasks_of(uid: int) -> int:
    """How many tasks (threads) run with real uid ``uid`` now."""
    tasks = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                tasks += int(fields["Threads"])
        except (OSError, KeyError, ValueError, IndexError):
            continue  # gone meanwhile
    return tasks
