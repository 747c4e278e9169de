"""Code mode's sandbox, for real: bubblewrap, the baseline training program, edited programs that
fail or try to reach what they must not. Each escape test checks what the program saw inside
and what happened (or did not) on the host."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read
from tiny_campaign import TINY_PROGRAM_JOB

from mlipilot.code_mode.model_boundary import rebuild_model, save_trusted_model
from mlipilot.code_mode.sandbox import (
    PROGRAM,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    find_bwrap,
    run_sandboxed,
)
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
    out = tmp_path / "out"
    result = _run(program_dir, cu, out, SandboxLimits(wall_seconds=300, threads=1))
    assert result.status == "ok", result.log_tail
    assert result.returncode == 0
    epochs = [line for line in result.log_tail.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2
    assert "valid_force_mae_meV_per_A" in epochs[-1]
    assert (out / "program.log").read_text().endswith(result.log_tail + "\n")

    model = rebuild_model(out)
    inside = json.loads((out / "predictions.json").read_text())
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
