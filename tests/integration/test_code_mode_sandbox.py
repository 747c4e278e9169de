"""Code mode's sandbox, for real: bubblewrap, the baseline training program, edited programs that
fail or try to reach what they must not. Each escape test checks what the program saw inside
and what happened (or did not) on the host."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read
from factories import TINY_PROGRAM_JOB

from mlipilot.code_mode import cgroups
from mlipilot.code_mode.model_boundary import rebuild_model, save_trusted_model
from mlipilot.code_mode.sandbox import PROGRAM, SandboxError, find_bwrap, run_sandboxed
from mlipilot.code_mode.sandbox_models import SandboxLimits, SandboxResult
from mlipilot.data.cu_emt import generate_cu_emt
from mlipilot.scoring.accuracy import evaluate_accuracy
from mlipilot.scoring.spec import AccuracySettings

TEMPLATE = Path(__file__).parents[2] / "services/mlipilot/code_mode/template"
QUICK = SandboxLimits(wall_seconds=60, threads=1)
# Same weights, graph and dtype inside and outside: the numbers are bit-identical.
SAME_PREDICTION = 0.0


if shutil.which("bwrap") is None and os.environ.get("MLIPILOT_REQUIRE_SANDBOX_TESTS"):
    # `make test` sets this where `make install` could install bubblewrap (root with apt):
    # there the sandbox tests must run, not skip.
    raise RuntimeError("MLIPILOT_REQUIRE_SANDBOX_TESTS is set but bwrap is not installed")
pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap not installed (apt-get install bubblewrap)"
)


@pytest.fixture(scope="module")
def cu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Cu EMT data set (4-atom cells): train.xyz and test.xyz."""
    root = tmp_path_factory.mktemp("cu")
    generate_cu_emt(root, seed=3, n_train=6, n_test=2, supercell=1)
    return root


@pytest.fixture()
def program_dir(tmp_path: Path) -> Path:
    """The campaign's copy of the program folder (a git repository in the campaign)."""
    dest = tmp_path / "program"
    shutil.copytree(TEMPLATE, dest)
    (dest / ".git").mkdir()  # other candidates' history: must not travel into the sandbox
    (dest / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return dest


def _edit(program_dir: Path, source: str) -> None:
    (program_dir / PROGRAM).write_text(textwrap.dedent(source))


def _run(program_dir: Path, cu: Path, out: Path, limits: SandboxLimits = QUICK) -> SandboxResult:
    return run_sandboxed(program_dir, TINY_PROGRAM_JOB, cu / "train.xyz", out, limits)


@pytest.mark.slow
def test_baseline_trains_in_the_sandbox_and_the_model_rebuilds(
    program_dir: Path, cu: Path, tmp_path: Path, torch_one_thread: None
) -> None:
    # predictions.json stays in the sandbox (only model.json and weights.pt come out): the
    # program also prints it, after the template's own main.
    template = (program_dir / PROGRAM).read_text()
    (program_dir / PROGRAM).write_text(
        template
        + "\n    job = json.loads(Path(sys.argv[1]).read_text())\n"
        + '    print("PREDICTIONS", (Path(job["out_dir"]) / "predictions.json").read_text())\n'
    )
    out = tmp_path / "out"
    result = _run(program_dir, cu, out, SandboxLimits(wall_seconds=300, threads=1))
    assert result.status == "ok", result.log_tail
    assert result.returncode == 0
    epochs = [line for line in result.log_tail.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2
    assert "valid_force_mae_meV_per_A" in epochs[-1]
    assert (out / "program.log").read_text().endswith(result.log_tail + "\n")
    assert sorted(os.listdir(out)) == ["model.json", "program.log", "weights.pt"]

    model = rebuild_model(out)
    printed = [ln for ln in result.log_tail.splitlines() if ln.startswith("PREDICTIONS ")]
    inside = json.loads(printed[-1].removeprefix("PREDICTIONS "))
    frame = read(cu / "train.xyz", index=0)
    energy, forces = _predict(model, frame)
    assert abs(energy - inside["energy"]) <= SAME_PREDICTION
    assert np.abs(forces - np.array(inside["forces"])).max() <= SAME_PREDICTION

    # The existing scorer takes the rebuilt model, pickled by us.
    trusted = save_trusted_model(out, tmp_path / "trusted" / "candidate.model")
    metrics = evaluate_accuracy(trusted, read(cu / "test.xyz", index=":"), AccuracySettings())
    assert all(np.isfinite(v) for v in metrics.values())


@pytest.mark.slow
def test_baseline_is_deterministic_from_its_seed(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    runs = [
        _run(program_dir, cu, tmp_path / f"out{i}", SandboxLimits(wall_seconds=300)) for i in (0, 1)
    ]
    assert [r.status for r in runs] == ["ok", "ok"]
    first, second = (torch.load(r.out_dir / "weights.pt", weights_only=True) for r in runs)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def _predict(model: torch.nn.Module, frame) -> tuple[float, np.ndarray]:
    from mace import data
    from mace.tools import torch_geometric, utils

    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        graph = data.AtomicData.from_config(
            data.config_from_atoms(frame), z_table=z_table, cutoff=float(model.r_max)
        )
    finally:
        torch.set_default_dtype(before)
    batch = next(iter(torch_geometric.dataloader.DataLoader([graph], batch_size=1)))
    out = model(batch.to_dict(), training=False)
    return out["energy"].item(), out["forces"].detach().numpy()


def test_a_raising_program_is_an_exception_with_its_traceback(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    _edit(
        program_dir,
        """
        def loss_term():
            raise RuntimeError("the new loss term divides by zero")

        loss_term()
        """,
    )
    result = _run(program_dir, cu, tmp_path / "out")
    assert result.status == "exception"
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.log_tail
    assert "RuntimeError: the new loss term divides by zero" in result.log_tail
    assert "line 3, in loss_term" in result.log_tail


def test_a_syntax_error_is_found_before_running_with_its_line(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    _edit(program_dir, "import json\n\nprint('ran', flush=True)\nloss = (1 +\n")
    result = _run(program_dir, cu, tmp_path / "out")
    assert result.status == "syntax_error"
    assert result.returncode is None
    assert "training/program.py, line 4" in result.log_tail
    assert "ran" not in result.log_tail
    assert (tmp_path / "out" / "program.log").read_text().strip() == result.log_tail


def test_a_program_that_writes_no_model_is_no_model(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    _edit(program_dir, "print('trained nothing')\n")
    result = _run(program_dir, cu, tmp_path / "out")
    assert result.status == "no_model"
    assert "without writing model.json" in result.log_tail


def test_a_gpu_training_without_a_gpu_here_runs_nothing_and_says_so(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    """``device: cuda`` binds the GPUs this process was given; with none (no /dev/nvidia<N>,
    as here, or a CUDA_VISIBLE_DEVICES naming a GPU that is not there) the sandbox refuses
    before the program runs rather than let it fall back to the CPU unnoticed."""
    _edit(program_dir, "open('/sandbox/out/ran', 'w').write('ran')\n")
    if any(Path("/dev").glob("nvidia[0-9]*")):
        pytest.skip("this machine has GPU device nodes")
    with pytest.raises(SandboxError, match="device cuda: no GPU device node"):
        run_sandboxed(
            program_dir, TINY_PROGRAM_JOB, cu / "train.xyz", tmp_path / "out", QUICK, device="cuda"
        )
    assert not (tmp_path / "out" / "ran").exists()


def test_a_program_over_its_cpu_seconds_is_killed(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    _edit(program_dir, "while True:\n    pass\n")
    limits = SandboxLimits(wall_seconds=60, cpu_seconds=1)
    result = _run(program_dir, cu, tmp_path / "out", limits)
    assert result.status == "killed"
    assert "SIGXCPU" in result.log_tail


def _processes_mentioning(*needles: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(f"{pid}: {cmdline.replace(chr(0), ' ')}")
    return found


def test_an_endless_program_times_out_and_leaves_no_process(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    marker = f"endless-{uuid.uuid4().hex}"
    # It starts a child, a child in a session of its own (out of the process group), then
    # becomes an endless loop itself: each carries the marker on its command line.
    _edit(
        program_dir,
        f"""
        import os, subprocess, sys
        loop = [sys.executable, "-c", "import time\\nwhile True: time.sleep(0.05)", "{marker}"]
        subprocess.Popen(loop)
        subprocess.Popen(loop, start_new_session=True)
        print("started", flush=True)
        os.execv(sys.executable, loop)
        """,
    )
    out = tmp_path / "out"
    result = _run(program_dir, cu, out, SandboxLimits(wall_seconds=3))
    assert result.status == "timeout"
    assert "started" in result.log_tail
    assert "over the wall-clock limit of 3 s" in result.log_tail
    assert 3 <= result.seconds < 15
    deadline = time.monotonic() + 5  # the kernel tears the PID namespace down asynchronously
    while _processes_mentioning(marker, str(out)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(marker, str(out)) == []


def test_lines_stream_as_they_come_and_a_cancel_stops_the_program(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    _edit(
        program_dir,
        """
        import time
        for epoch in range(1000):
            print(f"epoch {epoch}", flush=True)
            time.sleep(0.05)
        """,
    )
    cancel = threading.Event()
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if len(seen) == 3:
            cancel.set()

    result = run_sandboxed(
        program_dir,
        TINY_PROGRAM_JOB,
        cu / "train.xyz",
        tmp_path / "out",
        QUICK,
        on_line=on_line,
        cancel=cancel,
    )
    assert result.status == "cancelled"
    assert seen[:3] == ["epoch 0", "epoch 1", "epoch 2"]
    assert len(seen) < 100 and result.seconds < 10  # stopped, not run out
    assert "stopped: the campaign was cancelled" in result.log_tail


def test_the_test_split_and_the_project_are_not_there(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    test_split = cu / "test.xyz"
    assert test_split.is_file()
    _edit(
        program_dir,
        f"""
        import os, sys
        for path in [{str(test_split)!r}, {str(cu)!r}, "/sandbox/data/test.xyz"]:
            try:
                with open(path, "rb") as fh:
                    stolen = fh.read()
                open("/sandbox/out/leak.xyz", "wb").write(stolen)
                print("READ", path)
            except OSError as exc:
                print("DENIED", path, type(exc).__name__)
        try:
            import mlipilot
            print("IMPORTED mlipilot from", mlipilot.__file__)
        except ImportError as exc:
            print("NO PROJECT", type(exc).__name__)
        print("data:", sorted(os.listdir("/sandbox/data")))
        print("sandbox:", sorted(os.listdir("/sandbox")))
        print("program:", sorted(os.listdir("/sandbox/program")))
        print("git:", os.path.exists("/sandbox/program/.git"))
        """,
    )
    out = tmp_path / "out"
    result = _run(program_dir, cu, out)
    assert result.status == "no_model", result.log_tail
    assert f"DENIED {test_split} FileNotFoundError" in result.log_tail
    assert f"DENIED {cu} FileNotFoundError" in result.log_tail
    assert "DENIED /sandbox/data/test.xyz FileNotFoundError" in result.log_tail
    assert "NO PROJECT ModuleNotFoundError" in result.log_tail
    assert "data: ['train.xyz']" in result.log_tail
    assert "sandbox: ['data', 'job.json', 'out', 'program']" in result.log_tail
    assert "program: ['training']" in result.log_tail
    assert "git: False" in result.log_tail
    assert "READ" not in result.log_tail
    assert not (out / "leak.xyz").exists()


def test_no_connection_reaches_the_host(program_dir: Path, cu: Path, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        _edit(
            program_dir,
            f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=5).sendall(b"hello")
                print("CONNECTED")
            except OSError as exc:
                print("NO CONNECTION", type(exc).__name__)
            try:
                socket.getaddrinfo("pypi.org", 443)
                print("RESOLVED")
            except OSError as exc:
                print("NO DNS", type(exc).__name__)
            """,
        )
        result = _run(program_dir, cu, tmp_path / "out")
        assert "NO CONNECTION ConnectionRefusedError" in result.log_tail, result.log_tail
        assert "NO DNS gaierror" in result.log_tail
        assert "CONNECTED" not in result.log_tail
        with pytest.raises(BlockingIOError):  # nothing ever reached the host's listener
            server.accept()


def test_writes_outside_its_folders_fail(program_dir: Path, cu: Path, tmp_path: Path) -> None:
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    targets = {
        "host_tmp": tmp_path / "escaped.txt",
        "train_split": Path("/sandbox/data/train.xyz"),
        "job": Path("/sandbox/job.json"),
        "venv": Path(site_packages) / "escaped.pth",
        "usr": Path("/usr/lib/escaped.txt"),
        "root": Path("/escaped.txt"),
    }
    train_digest = hashlib.sha256((cu / "train.xyz").read_bytes()).hexdigest()
    _edit(
        program_dir,
        f"""
        import json
        targets = json.loads({json.dumps({k: str(v) for k, v in targets.items()})!r})
        for name, path in targets.items():
            try:
                with open(path, "a") as fh:
                    fh.write("escaped\\n")
                print("WROTE", name)
            except OSError as exc:
                print("DENIED", name, type(exc).__name__, exc.errno)
        # Its own working copy is writable, and the campaign's program folder is not it.
        with open(__file__, "a") as fh:
            fh.write("# edited inside the sandbox\\n")
        open("/tmp/scratch", "w").write("private tmp is fine")
        print("OWN COPY EDITED")
        """,
    )
    program_before = (program_dir / PROGRAM).read_bytes()
    result = _run(program_dir, cu, tmp_path / "out")
    assert "WROTE" not in result.log_tail, result.log_tail
    for name in targets:
        assert f"DENIED {name} " in result.log_tail
    assert "OWN COPY EDITED" in result.log_tail
    for path in (targets["host_tmp"], targets["venv"], Path("/usr/lib/escaped.txt")):
        assert not path.exists()
    assert hashlib.sha256((cu / "train.xyz").read_bytes()).hexdigest() == train_digest
    assert (program_dir / PROGRAM).read_bytes() == program_before


def test_a_missing_bwrap_is_an_error_that_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        find_bwrap()
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        _run(program_dir, cu, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing ran, not even unsandboxed


# ---- what the program leaves, and process and memory limits ----


def _within(seconds: float, fn: Callable[[], SandboxResult], fifos: Path) -> SandboxResult:
    """``fn()``, failing rather than hanging when it takes over ``seconds`` (a FIFO opened by
    mistake blocks forever): then the FIFOs under ``fifos`` get a writer, to let it go."""
    done: list[SandboxResult] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            done.append(fn())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for path in fifos.rglob("*"):
            if stat.S_ISFIFO(path.lstat().st_mode):
                with contextlib.suppress(OSError):
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"run_sandboxed still running after {seconds} s: blocked on a FIFO?")
    if errors:
        raise errors[0]
    return done[0]


def _leftovers(root: Path) -> list[str]:
    """Everything under ``root`` (not following links) that is not a plain folder or a plain
    file of mode 0644 or less: setuid, world-writable, symlinks, FIFOs."""
    odd = []
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            if mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH):
                odd.append(f"{path}: folder {mode:o}")
        elif not stat.S_ISREG(info.st_mode) or mode & ~0o644:
            odd.append(f"{path}: {stat.filemode(info.st_mode)}")
    return odd


# What a hostile program leaves in its out folder and its program folder: a setuid-root copy
# of a binary (its files are the campaign user's on the host), a world-writable folder, a
# symlink to a host file, a folder it chmod'ed 000 with a FIFO inside.
_LEAVE_BEHIND = """
    import os, shutil, sys
    out = "/sandbox/out"
    for folder in (out, "/sandbox/program"):
        shutil.copy(sys.executable, f"{folder}/suid-python")
        os.chmod(f"{folder}/suid-python", 0o4755)
        os.mkdir(f"{folder}/open-to-all")
        os.chmod(f"{folder}/open-to-all", 0o777)
        os.symlink(HOST_FILE, f"{folder}/host-link")
        os.makedirs(f"{folder}/locked/in")
        os.mkfifo(f"{folder}/locked/in/fifo")
        os.chmod(f"{folder}/locked/in", 0)
        os.chmod(f"{folder}/locked", 0)
    print("LEFT", sorted(os.listdir(out)), flush=True)
"""


def test_only_model_files_come_out_and_nothing_else_is_left(
    program_dir: Path, cu: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: leave a setuid copy, a world-writable folder and a symlink to a host file in
    the out folder (once the campaign's run folder). Only model.json and weights.pt come out,
    as plain 0644 copies; the rest goes with the sandbox's work folder."""
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text("the host's")
    _edit(
        program_dir,
        f"HOST_FILE = {str(host_file)!r}\n"
        + textwrap.dedent(_LEAVE_BEHIND)
        + textwrap.dedent(
            """
            open(f"{out}/model.json", "w").write('{"class": "MACE"}')
            open(f"{out}/weights.pt", "wb").write(b"tensors")
            os.chmod(f"{out}/weights.pt", 0o4777)
            """
        ),
    )
    scratch = tmp_path / "scratch"  # the sandbox's temporary folders go here
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "run" / "out"
    result = _within(60, lambda: _run(program_dir, cu, out), tmp_path)
    assert result.status == "ok", result.log_tail
    assert "LEFT ['host-link', 'locked', 'open-to-all', 'suid-python']" in result.log_tail
    assert sorted(os.listdir(out)) == ["model.json", "program.log", "weights.pt"]
    assert _leftovers(tmp_path / "run") == []
    assert (out / "model.json").read_text() == '{"class": "MACE"}'
    assert (out / "weights.pt").read_bytes() == b"tensors"
    assert all(stat.S_IMODE((out / n).stat().st_mode) == 0o644 for n in os.listdir(out))
    assert os.listdir(scratch) == []  # the work folder, with all the program left, is gone
    assert host_file.read_text() == "the host's"


def test_fifos_named_like_outputs_neither_hang_nor_come_out(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    """Attack: FIFOs named program.log and model.json in the out folder, which hung the
    campaign (opened for reading, a FIFO blocks until a writer comes)."""
    _edit(
        program_dir,
        """
        import os
        os.mkfifo("/sandbox/out/program.log")
        os.mkfifo("/sandbox/out/model.json")
        os.mkfifo("/sandbox/program/fifo")
        open("/sandbox/out/weights.pt", "wb").write(b"tensors")
        print("FIFOS MADE", flush=True)
        """,
    )
    out = tmp_path / "out"
    started = time.monotonic()
    result = _within(60, lambda: _run(program_dir, cu, out), tmp_path)
    assert time.monotonic() - started < 30
    assert result.status == "output_refused", result.log_tail
    assert "model.json is not a regular file but a FIFO: not taken" in result.log_tail
    assert sorted(os.listdir(out)) == ["program.log", "weights.pt"]
    assert _leftovers(out) == []
    assert "FIFOS MADE" in (out / "program.log").read_text()


def test_a_symlinked_or_oversized_output_is_refused(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    """Attack: model.json a symlink to a host file (the scorer would read the host's file);
    weights.pt over SandboxLimits.weights_bytes."""
    host_file = tmp_path / "host-secret.json"
    host_file.write_text('{"secret": 1}')
    _edit(
        program_dir,
        f"""
        import os
        os.symlink({str(host_file)!r}, "/sandbox/out/model.json")
        open("/sandbox/out/weights.pt", "wb").write(b"w" * (2 << 20))
        """,
    )
    out = tmp_path / "out"
    limits = SandboxLimits(wall_seconds=60, weights_bytes=1 << 20)
    result = _within(60, lambda: _run(program_dir, cu, out, limits), tmp_path)
    assert result.status == "output_refused", result.log_tail
    assert "model.json cannot be opened as a regular file (a symlink)" in result.log_tail
    assert "weights.pt has 2097152 bytes, over the limit of 1048576" in result.log_tail
    assert "SandboxLimits.weights_bytes" in result.log_tail
    assert os.listdir(out) == ["program.log"]


def _fork_until_refused(program_dir: Path, marker: str) -> None:
    """A program that forks children that sleep until forking fails. The loop stops by itself
    at 4x the test's limit of 32, so without a limit it ends (and says so) rather than eat the
    host."""
    _edit(
        program_dir,
        f"""
        import os, sys, time
        if sys.argv[-1] != {marker!r}:  # the marker on every child's command line
            os.execv(sys.executable, [sys.executable, *sys.argv, {marker!r}])
        children = 0
        try:
            while children < 4 * 32:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                children += 1
        except OSError as exc:
            print("FORK REFUSED after", children, type(exc).__name__, flush=True)
            sys.exit(3)
        print("NO LIMIT: forked", children, flush=True)
        """,
    )


def test_a_fork_bomb_is_stopped_by_the_process_limit(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    """Attack: a fork bomb. Forking fails below the limit; nothing of it outlives the run."""
    marker = f"forkbomb-{uuid.uuid4().hex}"
    _fork_until_refused(program_dir, marker)
    limits = SandboxLimits(wall_seconds=60, max_processes=32)
    result = _within(90, lambda: _run(program_dir, cu, tmp_path / "out", limits), tmp_path)
    if result.process_limit_enforced is False:  # root without a cgroup: it must say so
        assert result.limits_enforced_by == "rlimit"
        assert "the process count was not limited" in result.log_tail
        pytest.skip("no writable cgroup and uid 0: the process count cannot be limited here")
    assert result.status == "exception", result.log_tail
    assert "FORK REFUSED after" in result.log_tail
    assert "NO LIMIT" not in result.log_tail
    refused_after = int(result.log_tail.split("FORK REFUSED after ")[1].split()[0])
    assert refused_after < 32
    if result.limits_enforced_by != "rlimit":
        assert result.limits_hit == ["processes"]
        assert "the process limit (32 processes and threads at once" in result.log_tail
    deadline = time.monotonic() + 5
    while _processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(marker) == []


def test_memory_of_all_processes_together_is_limited(
    program_dir: Path, cu: Path, tmp_path: Path
) -> None:
    """Attack: three processes of 300 MiB each, every one under the per-process address-space
    limit of 512 MiB, 900 MiB together. The memory cgroup stops them at 512 MiB."""
    _edit(
        program_dir,
        """
        import os, sys, time
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                hog = b"x" * (300 << 20)  # written, so resident
                time.sleep(3)
                os._exit(0)
            children.append(pid)
        statuses = [os.waitpid(pid, 0)[1] for pid in children]
        killed = [os.WTERMSIG(s) for s in statuses if os.WIFSIGNALED(s)]
        print("CHILDREN KILLED BY", killed if killed else "nothing", flush=True)
        sys.exit(1 if killed else 0)
        """,
    )
    limits = SandboxLimits(wall_seconds=60, memory_bytes=512 << 20)
    result = _within(90, lambda: _run(program_dir, cu, tmp_path / "out", limits), tmp_path)
    if result.limits_enforced_by == "rlimit":
        assert "CHILDREN KILLED BY nothing" in result.log_tail  # only per process, as documented
        pytest.skip("no writable memory cgroup here: memory is limited per process only")
    assert result.status in ("exception", "killed"), result.log_tail
    assert "CHILDREN KILLED BY nothing" not in result.log_tail
    assert "memory" in result.limits_hit
    assert "the memory limit (512 MiB for all its processes together" in result.log_tail


def test_without_a_cgroup_rlimits_hold_or_the_result_says_they_do_not(
    program_dir: Path, cu: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no cgroup is writable: RLIMIT_NPROC, which the kernel does not enforce for uid 0.
    As root the result and the log say the process count was not limited, not pretend."""
    monkeypatch.setattr(cgroups, "make_cgroup", lambda limits: None)
    _fork_until_refused(program_dir, f"forkbomb-{uuid.uuid4().hex}")
    limits = SandboxLimits(wall_seconds=60, max_processes=32)
    result = _within(90, lambda: _run(program_dir, cu, tmp_path / "out", limits), tmp_path)
    assert result.limits_enforced_by == "rlimit"
    assert result.limits_hit == []
    if os.getuid() == 0:
        assert result.process_limit_enforced is False
        assert "NO LIMIT: forked 128" in result.log_tail
        assert "sandbox: the process count was not limited" in result.log_tail
    else:
        assert result.process_limit_enforced is True
        assert "FORK REFUSED after" in result.log_tail


def test_a_run_that_cannot_join_its_cgroup_runs_nothing(
    program_dir: Path, cu: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher joins the run's cgroup before it becomes bwrap; if it cannot, it stops
    there: the program never runs outside its limits."""
    gone = tmp_path / "no-such-cgroup"
    monkeypatch.setattr(
        cgroups, "make_cgroup", lambda limits: cgroups.Cgroup("cgroup-v1", {"pids": gone})
    )
    _edit(program_dir, "print('RAN', flush=True)\n")
    result = _run(program_dir, cu, tmp_path / "out")
    assert result.status == "exception"
    assert f"sandbox: cannot join the run's cgroup ({gone}/cgroup.procs" in result.log_tail
    assert "RAN" not in result.log_tail
