"""The sandbox's bwrap command line, read without running it."""

from __future__ import annotations

import venv
from pathlib import Path

from mlipilot.code_mode.sandbox import SandboxLimits, bwrap_args


def test_an_interpreter_under_tmp_is_bound_on_top_of_the_private_tmp(tmp_path: Path) -> None:
    """CI clones into /tmp: its virtual environment must stay visible in the sandbox, whose
    own /tmp is a fresh tmpfs (bwrap applies mounts in order: a later one hides an earlier)."""
    env = tmp_path / "venv"  # under /tmp, as a fresh clone's .venv can be
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    args = bwrap_args(
        bwrap="bwrap",
        python=python,
        work=tmp_path / "work",
        train_file=tmp_path / "train.xyz",
        out_dir=tmp_path / "out",
        limits=SandboxLimits(),
    )
    tmpfs = args.index("--tmpfs")
    assert args[tmpfs + 1] == "/tmp"
    binds = [i for i, a in enumerate(args) if a == "--ro-bind" and args[i + 1] == str(env)]
    assert binds and all(i > tmpfs for i in binds), (tmpfs, binds)
    assert args[-3:] == [str(python), "training/program.py", "/sandbox/job.json"]
