"""What a sandboxed program leaves behind: the two files taken out, and removing the rest.

The program is hostile until proven otherwise, and so is every file it wrote. Only two files
come out, into the caller's ``out_dir``: ``model.json`` (at most 1 MiB) and ``weights.pt`` (at
most ``SandboxLimits.weights_bytes``), each opened without following a symlink or blocking on
a FIFO, taken only if a regular file, and copied by the host into a new 0644 file. Everything
else the program left (a setuid copy of a binary, a world-writable folder, a symlink to a host
file, a FIFO) is removed with the work folder by ``remove_tree``, which never follows a
symlink nor opens anything but a folder.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
import uuid
from pathlib import Path

from mlipilot.code_mode.model_boundary import MAX_MODEL_JSON_BYTES, MODEL_JSON, WEIGHTS
from mlipilot.code_mode.sandbox_models import SandboxLimits, Status

# remove_tree moves folders deeper than this up to the top before emptying them, so it holds
# at most this many folders open however deep a program nested its own.
REMOVE_DEPTH = 32

_logger = logging.getLogger(__name__)


def take_outputs(out: Path, dest: Path, limits: SandboxLimits) -> tuple[Status, str | None]:
    """Copy model.json and weights.pt from the program's out folder into ``dest``: ("ok",
    None); ("no_model", None) when one is missing; ("output_refused", why) when one is not a
    regular file or is over its size limit. Each acceptable one is copied in any case."""
    caps = {
        MODEL_JSON: (MAX_MODEL_JSON_BYTES, "the model boundary's limit"),
        WEIGHTS: (limits.weights_bytes, "SandboxLimits.weights_bytes"),
    }
    folder = _open_folder(str(out), None)
    try:
        missing, refused = [], []
        for name, (cap, knob) in caps.items():
            try:
                why = take_file(folder, name, dest / name, cap, knob)
            except FileNotFoundError:
                missing.append(name)
                continue
            if why is not None:
                refused.append(why)
    finally:
        os.close(folder)
    if refused:
        return "output_refused", "; ".join(refused)
    return ("no_model", None) if missing else ("ok", None)


def take_file(folder: int, name: str, dest: Path, cap: int, knob: str) -> str | None:
    """Copy the regular file ``name`` of the open folder ``folder`` into ``dest``, a new file
    of mode 0644; None when copied, else why not (a symlink, a FIFO, over ``cap`` bytes, which
    ``knob`` sets). FileNotFoundError when there is no ``name``.

    O_NOFOLLOW: a symlink is refused, never read through; O_NONBLOCK: opening a FIFO returns at
    once (reads of a regular file ignore it); fstat on what was opened decides, not a name."""
    try:
        src = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder
        )
    except FileNotFoundError:
        raise
    except OSError as exc:
        what = "a symlink" if exc.errno == errno.ELOOP else exc.strerror
        return f"{name} cannot be opened as a regular file ({what}): not taken"
    try:
        info = os.fstat(src)
        if not stat.S_ISREG(info.st_mode):
            return f"{name} is not a regular file but {_kind(info.st_mode)}: not taken"
        if info.st_size > cap:
            return f"{name} has {info.st_size} bytes, over the limit of {cap} ({knob}): not taken"
        out = os.open(
            dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        try:
            os.fchmod(out, 0o644)  # whatever the umask or the program's mode: no setuid
            copied = _copy_fd(src, out, cap + 1)
        finally:
            os.close(out)
        if copied > cap:  # it grew after the fstat
            dest.unlink()
            return f"{name} has over {cap} bytes ({knob}): not taken"
        return None
    finally:
        os.close(src)


def _copy_fd(src: int, dst: int, most: int) -> int:
    """Copy up to ``most`` bytes from ``src`` to ``dst``; the number copied."""
    copied = 0
    while copied < most:
        sent = os.sendfile(dst, src, None, min(1 << 24, most - copied))
        if sent == 0:
            break
        copied += sent
    return copied


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return f"mode {mode:o}"


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it as a hostile program may have left it.

    Never follows a symlink and never opens anything but a folder: a FIFO, socket or device
    node is unlinked, not opened (shutil.rmtree would block opening a FIFO it takes for a
    folder). Each folder is made rwx for its owner (us) before it is read, so one chmod'ed 000
    cannot block the removal. Folders deeper than REMOVE_DEPTH are moved up to ``path`` and
    emptied from there: any depth, with a bounded number of open folders."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return
    top = _open_folder(os.fspath(path), None)
    try:
        while _empty_folder(top, top, 0):
            pass  # another pass for the folders moved up
    finally:
        os.close(top)
    os.rmdir(path)


def _empty_folder(folder: int, top: int, depth: int) -> bool:
    """Remove everything in the open ``folder``; True when it moved folders up to ``top``."""
    moved = False
    with os.scandir(folder) as entries:
        listing = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    for name, is_folder in listing:
        if not is_folder:
            os.unlink(name, dir_fd=folder)
            continue
        child = _open_folder(name, folder)  # also makes it ours to rename or empty
        try:
            if depth >= REMOVE_DEPTH:
                os.rename(name, f".removing-{uuid.uuid4().hex}", src_dir_fd=folder, dst_dir_fd=top)
                moved = True
                continue
            moved |= _empty_folder(child, top, depth + 1)
        finally:
            os.close(child)
        os.rmdir(name, dir_fd=folder)
    return moved


def _open_folder(name: str, parent: int | None) -> int:
    """The folder ``name`` (in ``parent``, an open folder) opened for reading after making it
    rwx for its owner; OSError if it is not a folder (a symlink to one included)."""
    # O_PATH needs no permission on the folder, so one chmod'ed 000 opens; chmod through
    # /proc/self/fd acts on that very folder, so it cannot be turned onto a symlink's target.
    handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        proc = f"/proc/self/fd/{handle}"
        with contextlib.suppress(OSError):  # not ours: reading it may still work
            os.chmod(proc, 0o700)
        return os.open(proc, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        os.close(handle)


def remove_work(work: Path) -> None:
    """Remove the work folder; a leftover is logged, never raised over the run's result."""
    for attempt in range(5):
        try:
            remove_tree(work)
            return
        except OSError as exc:  # a process of the sandbox still writing (no cgroup killed it)
            if attempt == 4:
                _logger.warning("could not remove the sandbox's work folder %s: %s", work, exc)
            time.sleep(0.1 * (attempt + 1))
