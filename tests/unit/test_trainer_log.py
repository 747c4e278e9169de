"""Parsing mace_run_train's log lines, and judging how a training run ended (no MACE run)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mlipilot.model_files import PACKAGE_NAME
from mlipilot.training.mace_args import MODEL_NAME
from mlipilot.training.mace_entry import final_model_file
from mlipilot.training.trainer import EpochRecord, TrainingBudget, _judge, parse_epoch_line

# Lines as mace-torch 0.3.16 writes them (tools/train.py, valid_err_log).
PREFIX = "2026-11-27 06:43:09.936 INFO: "
RMSE_EPOCH = (
    PREFIX + "Epoch 0: head: Default, loss=16.72787737, RMSE_E_per_atom=  634.83 meV, "
    "RMSE_F=  912.34 meV / A"
)
RMSE_INITIAL = (
    PREFIX + "Initial: head: Default, loss=20.00000000, RMSE_E_per_atom= 1634.83 meV, "
    "RMSE_F= 1912.34 meV / A"
)
MAE_EPOCH = (
    PREFIX + "Epoch 3: head: Default, loss=0.1, MAE_E_per_atom=   12.30 meV, MAE_F=   45.60 meV / A"
)
NAN_EPOCH = (
    PREFIX + "Epoch 5: head: Default, loss=nan, MAE_E_per_atom=     nan meV, MAE_F=     nan meV / A"
)
STRESS_EPOCH = (
    PREFIX + "Epoch 12: head: Default, loss=0.00123400, MAE_E_per_atom=    1.20 meV, "
    "MAE_F=   30.00 meV / A, MAE_stress=    0.50 meV / A^3"
)

BUDGET = TrainingBudget(epochs=10, max_seconds=100.0)


def test_rmse_epoch_line() -> None:
    record = parse_epoch_line(RMSE_EPOCH)
    assert record == EpochRecord(
        epoch=0, loss=16.72787737, valid={"RMSE_E_per_atom": 634.83, "RMSE_F": 912.34}
    )


def test_initial_line_is_epoch_minus_one() -> None:
    record = parse_epoch_line(RMSE_INITIAL)
    assert record is not None
    assert record.epoch == -1
    assert record.loss == pytest.approx(20.0)
    assert record.valid == {"RMSE_E_per_atom": 1634.83, "RMSE_F": 1912.34}


def test_per_atom_mae_line() -> None:
    record = parse_epoch_line(MAE_EPOCH)
    assert record is not None
    assert record.epoch == 3
    assert record.loss == pytest.approx(0.1)
    assert record.valid == {"MAE_E_per_atom": 12.30, "MAE_F": 45.60}


def test_multi_digit_epoch_and_extra_metrics() -> None:
    record = parse_epoch_line(STRESS_EPOCH)
    assert record is not None
    assert record.epoch == 12
    assert record.loss == pytest.approx(0.001234)
    assert record.valid == {"MAE_E_per_atom": 1.2, "MAE_F": 30.0, "MAE_stress": 0.5}


def test_nan_loss_is_parsed_as_nan() -> None:
    record = parse_epoch_line(NAN_EPOCH)
    assert record is not None
    assert record.epoch == 5
    assert math.isnan(record.loss)
    assert math.isnan(record.valid["MAE_F"])


def test_line_without_timestamp_prefix() -> None:
    record = parse_epoch_line("Epoch 1: head: Default, loss=2.5, MAE_E_per_atom= 1.00 meV\n")
    assert record is not None
    assert (record.epoch, record.loss) == (1, 2.5)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        PREFIX + "Started training, reseting metrics",
        PREFIX + "Loading checkpoint: checkpoints/candidate_run-1_epoch-4.pt",
        PREFIX + "===========TRAINING===========",
        PREFIX + "Changing loss based on Stage Two Weights",
        PREFIX + "Training complete",
        PREFIX + "Number of parameters: 12345",
        "Traceback (most recent call last):",
    ],
)
def test_non_epoch_lines_give_none(line: str) -> None:
    assert parse_epoch_line(line) is None


# -- _judge ------------------------------------------------------------------------------------


def _curve(*losses: float) -> list[EpochRecord]:
    return [EpochRecord(epoch=i - 1, loss=loss, valid={}) for i, loss in enumerate(losses)]


def _write_models(mace_dir: Path, *names: str) -> None:
    mace_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        (mace_dir / name).write_bytes(b"model")


PACKAGE = PACKAGE_NAME  # what the trainer's child leaves when it succeeds


def test_nan_last_loss_fails_even_with_a_model(tmp_path: Path) -> None:
    _write_models(tmp_path, PACKAGE)
    status, cause, model = _judge(
        -9, "exited", _curve(1.0, 0.5, math.nan), tmp_path / PACKAGE, BUDGET
    )
    assert status == "failed"
    assert cause is not None
    assert "non-finite loss" in cause
    assert "epoch 1" in cause
    assert model is None


def test_infinite_last_loss_fails(tmp_path: Path) -> None:
    status, cause, _ = _judge(0, "exited", _curve(1.0, math.inf), tmp_path / PACKAGE, BUDGET)
    assert status == "failed"
    assert cause is not None
    assert "non-finite loss" in cause


def test_a_run_killed_at_the_wall_budget_is_a_timeout(tmp_path: Path) -> None:
    status, cause, model = _judge(-9, "timeout", _curve(1.0, 0.5), tmp_path / PACKAGE, BUDGET)
    assert status == "timeout"
    assert cause is not None
    assert "100 s" in cause
    assert model is None


def test_a_run_killed_by_a_cancel_is_cancelled(tmp_path: Path) -> None:
    status, cause, model = _judge(-9, "cancelled", _curve(1.0), tmp_path / PACKAGE, BUDGET)
    assert (status, cause, model) == ("cancelled", "cancelled while training", None)


def test_nonzero_exit_within_the_budget_is_a_failure(tmp_path: Path) -> None:
    status, cause, model = _judge(1, "exited", _curve(1.0), tmp_path / PACKAGE, BUDGET)
    assert status == "failed"
    assert cause is not None
    assert "code 1" in cause
    assert model is None


def test_clean_exit_without_a_model_is_a_failure(tmp_path: Path) -> None:
    status, cause, model = _judge(0, "exited", _curve(1.0, 0.5), tmp_path / PACKAGE, BUDGET)
    assert status == "failed"
    assert cause is not None
    assert "no model" in cause
    assert model is None


def test_a_clean_run_hands_back_its_package(tmp_path: Path) -> None:
    _write_models(tmp_path, PACKAGE)
    assert _judge(0, "exited", _curve(1.0, 0.5), tmp_path / PACKAGE, BUDGET) == (
        "ok",
        None,
        tmp_path / PACKAGE,
    )


def test_stage_one_model_when_it_is_the_only_one(tmp_path: Path) -> None:
    _write_models(tmp_path, f"{MODEL_NAME}.model")
    assert final_model_file(tmp_path, MODEL_NAME) == tmp_path / f"{MODEL_NAME}.model"


def test_stage_two_model_is_preferred(tmp_path: Path) -> None:
    _write_models(tmp_path, f"{MODEL_NAME}.model", f"{MODEL_NAME}_stagetwo.model")
    assert final_model_file(tmp_path, MODEL_NAME) == tmp_path / f"{MODEL_NAME}_stagetwo.model"
    assert final_model_file(tmp_path, "other") is None


def test_slow_but_clean_run_is_ok(tmp_path: Path) -> None:
    _write_models(tmp_path, PACKAGE)
    status, _, model = _judge(0, "exited", _curve(1.0), tmp_path / PACKAGE, BUDGET)
    assert status == "ok"
    assert model == tmp_path / PACKAGE


@pytest.mark.parametrize(
    ("returncode", "words"),
    [(-9, "killed by SIGKILL (out of memory?"), (-11, "killed by SIGSEGV; see train.log")],
)
def test_a_child_killed_by_a_signal_names_it(tmp_path: Path, returncode: int, words: str) -> None:
    # Within the wall-clock budget: not a time-out, but a kill (the OOM killer sends SIGKILL).
    status, cause, model = _judge(returncode, "exited", _curve(1.0), tmp_path / PACKAGE, BUDGET)
    assert status == "failed" and model is None
    assert cause is not None and words in cause
