"""The same quick data set from a process pool and from Ray tasks as from the serial loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlipilot.data.molecules.qm7 import Execution, ensure_qm7


def _build(out: Path, execution: Execution) -> dict[str, str]:
    result = ensure_qm7(
        out, molecules=3, level="quick", configs_per_molecule=2, execution=execution
    )
    assert result.stats.labels_computed == 6
    return {s: i.sha256 for s, i in result.dataset.manifest.splits.items()}


@pytest.fixture(scope="module")
def serial_hashes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _build(tmp_path_factory.mktemp("serial"), Execution())


def test_process_pool_gives_the_same_bytes(tmp_path: Path, serial_hashes: dict[str, str]) -> None:
    assert _build(tmp_path, Execution("process", workers=2)) == serial_hashes


def test_ray_tasks_give_the_same_bytes(
    ray_session: None, tmp_path: Path, serial_hashes: dict[str, str]
) -> None:
    assert _build(tmp_path, Execution("ray")) == serial_hashes


def test_the_thread_count_does_not_change_the_data(
    tmp_path: Path, serial_hashes: dict[str, str]
) -> None:
    """tblite's OpenMP sums round differently per thread count: pinned to one thread, a
    serial build in a process given 2 threads writes the same bytes."""
    script = (
        "import json, sys; from pathlib import Path\n"
        "from mlipilot.data.molecules.qm7 import Execution, ensure_qm7\n"
        "r = ensure_qm7(Path(sys.argv[1]), molecules=3, level='quick', configs_per_molecule=2,"
        " execution=Execution())\n"
        "print(json.dumps({s: i.sha256 for s, i in r.dataset.manifest.splits.items()}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == serial_hashes
