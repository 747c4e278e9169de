"""buf (PyPI buf-bin) on protos/: lint, and breaking-change checks against git.

Lint: buf's STANDARD rules except the two that contradict Google's resource-oriented API style
the protos follow (Get/Create/Cancel return the Campaign itself, Watch streams CampaignEvent):
RPC_REQUEST_RESPONSE_UNIQUE and RPC_RESPONSE_STANDARD_NAME.

Breaking changes (FILE rules): the working tree against the git HEAD copy (what a developer is
about to commit) and against the local `main` branch when there is one. Offline there is no
remote main to compare with, and on main itself both are the same commit, so a further test
breaks a copy on purpose and checks that buf reports it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from chart_render import REPO

CONFIG = json.dumps(
    {
        "version": "v2",
        "modules": [{"path": "protos"}],
        "lint": {
            "use": ["STANDARD"],
            "except": ["RPC_REQUEST_RESPONSE_UNIQUE", "RPC_RESPONSE_STANDARD_NAME"],
        },
        "breaking": {"use": ["FILE"]},
    }
)


def buf(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    local = Path(sys.prefix) / "bin" / "buf"
    exe = str(local) if local.exists() else shutil.which("buf")
    if exe is None:
        pytest.fail("buf not found: pip install buf-bin (in the dev extra)")
    return subprocess.run(
        [exe, *args, "--config", CONFIG], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _git_ref_exists(ref: str) -> bool:
    if not (REPO / ".git").exists():
        return False
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", ref], cwd=REPO, capture_output=True
    )
    return proc.returncode == 0


def test_protos_pass_buf_lint() -> None:
    proc = buf("lint", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_buf_lint_reports_a_violation(tmp_path: Path) -> None:
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    proto = tmp_path / "protos" / "mlipilot" / "v1" / "common.proto"
    proto.write_text(proto.read_text() + "\nmessage bad_name { string CamelField = 1; }\n")
    proc = buf("lint", ".", cwd=tmp_path)
    assert proc.returncode != 0
    assert "bad_name" in proc.stdout and "CamelField" in proc.stdout


@pytest.mark.parametrize("ref", ["HEAD", "main"])
def test_no_breaking_change_against_git(ref: str) -> None:
    if not _git_ref_exists(ref):
        pytest.skip(f"no git ref {ref} here")
    proc = buf("breaking", ".", "--against", f".git#ref={ref}", "--against-config", CONFIG)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_buf_breaking_reports_a_removed_field(tmp_path: Path) -> None:
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    proto = tmp_path / "protos" / "mlipilot" / "v1" / "scorecard.proto"
    text = proto.read_text()
    assert "string model_uri = 3;" in text
    proto.write_text(text.replace("string model_uri = 3;", ""))
    proc = buf("breaking", ".", "--against", str(REPO), "--against-config", CONFIG, cwd=tmp_path)
    assert proc.returncode != 0
    assert "model_uri" in proc.stdout
