"""The sandbox's pure parts, without running a program: the bwrap and launcher command lines,
where the cgroups are, taking a file out of the sandbox and removing what a program left."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import stat
import sys
import threading
import venv
from collections.abc import Callable
from pathlib import Path

import pytest

from mlipilot.code_mode.cgroups import cgroup_folders
from mlipilot.code_mode.gpus import gpu_device_nodes
from mlipilot.code_mode.leftovers import REMOVE_DEPTH, remove_tree, take_file
from mlipilot.code_mode.sandbox import bwrap_args, launcher_args
from mlipilot.code_mode.sandbox_models import SandboxLimits
from mlipilot.errors import MlipilotError


def test_an_interpreter_under_tmp_is_bound_on_top_of_the_private_tmp(tmp_path: Path) -> None:
    """CI clones into /tmp: its virtual environment must stay visible in the sandbox, whose
    own /tmp is a fresh tmpfs (bwrap applies mounts in order: a later one hides an earlier)."""
    env = tmp_path / "venv"  # under /tmp, as a fresh clone's .venv can be
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    work = tmp_path / "work"
    args = bwrap_args(
        bwrap="bwrap",
        python=python,
        work=work,
        train_file=tmp_path / "train.xyz",
        limits=SandboxLimits(),
    )
    tmpfs = args.index("--tmpfs")
    assert args[tmpfs + 1] == "/tmp"
    binds = [i for i, a in enumerate(args) if a == "--ro-bind" and args[i + 1] == str(env)]
    assert binds and all(i > tmpfs for i in binds), (tmpfs, binds)
    assert args[-3:] == [str(python), "training/program.py", "/sandbox/job.json"]
    # Writable: only the private work folder's program copy and out folder.
    writable = {args[i + 1]: args[i + 2] for i, a in enumerate(args) if a == "--bind"}
    assert writable == {
        str(work / "program"): "/sandbox/program",
        str(work / "out"): "/sandbox/out",
    }


def test_the_launcher_joins_the_cgroup_and_sets_nproc_only_when_asked() -> None:
    limits = SandboxLimits(max_processes=64, memory_bytes=512 << 20)
    cmd = ["bwrap", "--", "python"]
    procs = ["/sys/fs/cgroup/pids/run/cgroup.procs", "/sys/fs/cgroup/memory/run/cgroup.procs"]
    args = launcher_args(cmd, limits, procs, None)
    assert args[-3:] == cmd
    rlimits = dict(json.loads(args[-5]))
    assert json.loads(args[-4]) == procs
    assert "RLIMIT_NPROC" not in rlimits
    assert rlimits["RLIMIT_AS"] == [512 << 20, 512 << 20]
    rlimits = dict(json.loads(launcher_args(cmd, limits, [], 64 + 10)[-5]))
    assert rlimits["RLIMIT_NPROC"] == [74, 74]


HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = "9:name=systemd:/\n8:pids:/\n4:memory:/jobs/a b\n0::/\n"


def test_cgroup_folders_v1_and_v2() -> None:
    v2, v1 = cgroup_folders(HYBRID_CGROUP, HYBRID_MOUNTS)
    assert v2 == Path("/sys/fs/cgroup/unified")
    assert v1["pids"] == Path("/sys/fs/cgroup/pids")
    assert v1["memory"] == Path("/sys/fs/cgroup/memory/jobs/a b")
    # Pure cgroup v2, optional fields in mountinfo, an escaped space in the mount point.
    mounts = "30 23 0:26 / /sys/fs/cg\\040two rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
    v2, v1 = cgroup_folders("0::/user.slice/app.service\n", mounts)
    assert v2 == Path("/sys/fs/cg two/user.slice/app.service") and v1 == {}
    # A mount of part of the hierarchy: only cgroups under its root are reachable through it.
    mounts = "35 31 0:32 /jobs /mnt/mem rw - cgroup cgroup rw,memory\n"
    assert cgroup_folders("4:memory:/jobs/x\n", mounts)[1] == {"memory": Path("/mnt/mem/x")}
    assert cgroup_folders("4:memory:/other\n", mounts)[1] == {}
    assert cgroup_folders("", "") == (None, {})


def _within(seconds: float, fn: Callable[[], object]) -> None:
    """Run ``fn``, failing (not hanging) if it takes over ``seconds``: a FIFO opened by
    mistake blocks forever."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked on a FIFO?)"
    if errors:
        raise errors[0]


def test_take_file_copies_a_regular_file_as_a_plain_0644_file(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    (src / "weights.pt").write_bytes(b"w" * 5000)
    (src / "weights.pt").chmod(0o4777)  # setuid, world-writable: the copy is neither
    folder = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert take_file(folder, "weights.pt", dest / "weights.pt", 5000, "cap") is None
        copied = dest / "weights.pt"
        assert copied.read_bytes() == b"w" * 5000
        assert stat.S_IMODE(copied.lstat().st_mode) == 0o644
        with pytest.raises(FileExistsError):  # never over an existing file
            take_file(folder, "weights.pt", copied, 5000, "cap")
        with pytest.raises(FileNotFoundError):
            take_file(folder, "model.json", dest / "model.json", 5000, "cap")
    finally:
        os.close(folder)


def test_take_file_refuses_a_fifo_a_symlink_a_socket_a_folder_and_a_big_file(
    tmp_path: Path,
) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    secret = tmp_path / "host-secret"
    secret.write_text("not the candidate's")
    os.mkfifo(src / "fifo")
    (src / "link").symlink_to(secret)
    (src / "folder").mkdir()
    (src / "big").write_bytes(b"x" * 101)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))
        folder = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
        try:
            why: dict[str, str | None] = {}

            def take_all() -> None:
                for name in ("fifo", "link", "folder", "big", "sock"):
                    why[name] = take_file(folder, name, dest / name, 100, "SomeLimit")

            _within(10, take_all)
        finally:
            os.close(folder)
    assert "not a regular file but a FIFO" in str(why["fifo"])
    assert "(a symlink)" in str(why["link"])
    assert "not a regular file but a folder" in str(why["folder"])
    assert "101 bytes, over the limit of 100 (SomeLimit)" in str(why["big"])
    assert "cannot be opened as a regular file" in str(why["sock"])
    assert os.listdir(dest) == []


_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _without_dac_override(fn: Callable[[], object]) -> None:
    """Run ``fn`` as a user who must own a folder to get into it: root drops
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the effective set of a thread of its own
    (capabilities are per thread; the thread ends with the call)."""
    if os.geteuid() != 0:
        _within(30, fn)
        return

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

    libc = ctypes.CDLL(None, use_errno=True)

    def dropped() -> None:
        header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
        assert libc.capget(ctypes.byref(header), data) == 0, ctypes.get_errno()
        data[0].effective &= ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
        assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
        fn()

    _within(30, dropped)


def test_remove_tree_removes_what_a_hostile_program_leaves(tmp_path: Path) -> None:
    """FIFOs, a socket, symlinks to host files and folders, a setuid file, folders chmod'ed 000
    and 0777 and a nesting deeper than the open-folder bound: all gone, the targets intact."""
    host_file, host_dir = tmp_path / "host-file", tmp_path / "host-dir"
    host_file.write_text("keep me")
    host_dir.mkdir()
    (host_dir / "inside").write_text("keep me too")
    top = tmp_path / "work"
    out = top / "out"
    out.mkdir(parents=True)
    os.mkfifo(out / "program.log")
    os.mkfifo(out / "model.json")
    (out / "link-file").symlink_to(host_file)
    (out / "link-dir").symlink_to(host_dir)
    (out / "setuid").write_bytes(b"\x7fELF")
    (out / "setuid").chmod(0o4755)
    (out / "open").mkdir()
    (out / "open").chmod(0o777)
    locked = out / "locked" / "deeper"
    locked.mkdir(parents=True)
    os.mkfifo(locked / "fifo")
    (locked / "file").write_text("x")
    locked.chmod(0)
    (out / "locked").chmod(0)
    deep = top / "deep"
    for i in range(3 * REMOVE_DEPTH + 5):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    os.mkfifo(deep / "fifo")
    (deep / "file").write_text("bottom")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(out / "sock"))
        _without_dac_override(lambda: remove_tree(top))
    assert not top.exists() and not top.is_symlink()
    assert host_file.read_text() == "keep me"
    assert (host_dir / "inside").read_text() == "keep me too"
    # A path that is a symlink or a FIFO itself is unlinked, never followed or opened.
    (tmp_path / "top-link").symlink_to(host_dir)
    os.mkfifo(tmp_path / "top-fifo")
    _within(10, lambda: [remove_tree(tmp_path / n) for n in ("top-link", "top-fifo", "absent")])
    assert sorted(os.listdir(tmp_path)) == ["host-dir", "host-file"]
    assert (host_dir / "inside").exists()


def _dev(tmp_path: Path, *names: str) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir(parents=True)
    for name in names:
        (dev / name).touch()
    return dev


def test_a_gpu_training_gets_its_own_gpus_and_nvidias_control_nodes_only(tmp_path: Path) -> None:
    dev = _dev(tmp_path, "nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "sda", "kvm")
    nodes = gpu_device_nodes("2", dev)
    assert nodes == [dev / "nvidiactl", dev / "nvidia-uvm", dev / "nvidia2"]
    assert gpu_device_nodes("0,2", dev)[-2:] == [dev / "nvidia0", dev / "nvidia2"]
    # Not plain indices (UUIDs), or unset: every GPU node there is (a pod has only its own).
    assert gpu_device_nodes("GPU-5e3f", dev)[-3:] == [dev / f"nvidia{i}" for i in range(3)]

    def args_with(gpu_nodes: list[Path]) -> list[str]:
        return bwrap_args(
            bwrap="bwrap",
            python=Path(sys.executable),
            work=tmp_path / "work",
            train_file=tmp_path / "train.xyz",
            limits=SandboxLimits(),
            gpu_nodes=gpu_nodes,
        )

    args = args_with(nodes)
    bound = [args[i + 1] for i, a in enumerate(args) if a == "--dev-bind"]
    assert bound == [str(n) for n in nodes]
    assert args.index("--dev-bind") > args.index("--dev")  # on top of the minimal /dev
    assert "--dev-bind" not in args_with([])


def test_no_gpu_node_to_bind_is_an_error_that_says_which(tmp_path: Path) -> None:
    dev = _dev(tmp_path, "nvidia0", "nvidiactl")
    with pytest.raises(MlipilotError, match="nvidia3"):
        gpu_device_nodes("3", dev)
    with pytest.raises(MlipilotError, match="no GPU device node"):
        gpu_device_nodes(None, _dev(tmp_path / "cpu-only", "null", "zero"))


def test_a_gpu_training_has_no_address_space_limit_but_keeps_the_others() -> None:
    limits = SandboxLimits(memory_bytes=512 << 20)
    rlimits = dict(json.loads(launcher_args(["bwrap"], limits, [], None, gpu=True)[-3]))
    assert "RLIMIT_AS" not in rlimits  # CUDA reserves vast address space
    assert rlimits["RLIMIT_CPU"][0] == limits.cpu_seconds
    assert rlimits["RLIMIT_FSIZE"][0] == limits.file_bytes
