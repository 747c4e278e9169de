"""Code mode's rule-based edits, trained for real: the template and each edited program run
in the sandbox on a few Cu EMT frames and write a model, and each edit does what it says."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from factories import TINY_PROGRAM_JOB

from mlipilot.code_mode.edits import CODE_EDITS, PROGRAM
from mlipilot.code_mode.model_boundary import MODEL_JSON, WEIGHTS
from mlipilot.code_mode.sandbox import SandboxLimits, SandboxResult, run_sandboxed
from mlipilot.data.dataset import Dataset, ensure_cu_emt

TEMPLATE = Path(__file__).parents[2] / "services/mlipilot/code_mode/template"
LIMITS = SandboxLimits(wall_seconds=300, threads=1)
EPOCHS = 5  # stage two starts at epoch 5 * 60 // 100 = 3
TINY_JOB = {**TINY_PROGRAM_JOB, "epochs": EPOCHS, "seed": 1}
EPOCH_LINE = re.compile(r"^epoch (\d+) train_loss (\S+) ", re.MULTILINE)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("bwrap") is None,
        reason="bubblewrap not installed (apt-get install bubblewrap)",
    ),
]


@pytest.fixture(scope="module")
def cu(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A few Cu EMT frames (4-atom cells)."""
    return ensure_cu_emt(tmp_path_factory.mktemp("cu"), seed=5, n_train=8, n_test=2, supercell=1)


@pytest.fixture(scope="module")
def runs(cu: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, SandboxResult]:
    """The template and each edited program (and all edits stacked), trained once each."""
    template = (TEMPLATE / PROGRAM).read_text()
    programs = {"template": template}
    stacked = template
    for code_edit in CODE_EDITS:
        programs[code_edit.name] = code_edit.edit(template)
        stacked = code_edit.edit(stacked)
    programs["stacked"] = stacked
    results = {}
    for name, text in programs.items():
        root = tmp_path_factory.mktemp(name)
        shutil.copytree(TEMPLATE, root / "program")
        (root / "program" / PROGRAM).write_text(text)
        results[name] = run_sandboxed(
            root / "program", TINY_JOB, cu.path("train"), root / "out", LIMITS
        )
    return results


def _log(result: SandboxResult) -> str:
    return result.log_path.read_text()


def _train_losses(result: SandboxResult) -> list[float]:
    found = EPOCH_LINE.findall(_log(result))
    assert [int(epoch) for epoch, _ in found] == list(range(EPOCHS)), _log(result)
    return [float(loss) for _, loss in found]


@pytest.mark.parametrize("name", ["template", *(e.name for e in CODE_EDITS), "stacked"])
def test_each_program_trains_and_writes_a_model(runs: dict[str, SandboxResult], name: str) -> None:
    result = runs[name]
    assert result.status == "ok", result.log_tail
    assert (result.out_dir / MODEL_JSON).is_file()
    assert (result.out_dir / WEIGHTS).is_file()
    assert all(torch.isfinite(torch.tensor(_train_losses(result))))


def test_two_stage_switches_at_the_right_epoch(runs: dict[str, SandboxResult]) -> None:
    log = _log(runs["two-stage-schedule"])
    stage_two = re.findall(
        r"^stage two from epoch (\d+): energy_weight (\S+), lr (\S+)$", log, re.M
    )
    assert stage_two == [("3", "100", "0.001")], log
    assert log.index("stage two from epoch 3") > log.index("\nepoch 2 ")
    assert log.index("stage two from epoch 3") < log.index("\nepoch 3 ")
    assert "stage two" not in _log(runs["template"])


def test_force_norm_term_is_in_the_loss(runs: dict[str, SandboxResult]) -> None:
    # Same seed, same data, same batches: only the loss differs, and with it every epoch.
    template = _train_losses(runs["template"])
    force_norm = _train_losses(runs["force-norm-loss"])
    assert force_norm[-1] != template[-1]
    # The added term is non-negative and, at these errors, of the order of the MSE terms or
    # larger: the first epoch, from the same initial weights, reports a larger loss.
    assert force_norm[0] > template[0]


def test_cosine_changes_the_trajectory(runs: dict[str, SandboxResult]) -> None:
    template = _train_losses(runs["template"])
    cosine = _train_losses(runs["cosine-lr"])
    assert cosine[0] == template[0]  # the lr is the same during the first epoch
    assert cosine[1:] != template[1:]
