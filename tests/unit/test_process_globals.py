"""Scoring from parallel threads: what touches process-wide state waits for GLOBALS_LOCK.

Two candidates are scored side by side in threads of one process. Unpickling a MACE model runs
e3nn's torch.fx code generation (a module-global patcher), and MACE sets torch's process-wide
default dtype around every graph it builds; done in two threads at once these fail now and then
(a candidate was lost in CI to it). Each entry point must hold the lock while it does so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ase.build import bulk
from factories import untrained_mace

from mlipilot.data.extxyz import ENERGY_KEY, FORCES_KEY
from mlipilot.model_files import write_package
from mlipilot.process_globals import GLOBALS_LOCK
from mlipilot.scoring.accuracy import evaluate_accuracy
from mlipilot.scoring.md_stability import load_md_calculator
from mlipilot.scoring.model_file import load_model
from mlipilot.scoring.spec import AccuracySettings


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "cu.model"
    write_package(untrained_mace([29], [-3.0], hidden_irreps="8x0e+8x1o"), path)
    return path


def _labelled_cu():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=0)
    atoms.info[ENERGY_KEY] = -12.0
    atoms.arrays[FORCES_KEY] = atoms.get_positions() * 0.0
    return atoms


ENTRY_POINTS: dict[str, Callable[[Path], object]] = {
    "load_model": load_model,
    "load_md_calculator": lambda p: load_md_calculator(p, dtype="float32"),
    "evaluate_accuracy": lambda p: evaluate_accuracy(p, [_labelled_cu()], AccuracySettings()),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_entry_point_waits_while_another_thread_holds_the_lock(model_file: Path, entry: str):
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(ENTRY_POINTS[entry](model_file)))
    with GLOBALS_LOCK:
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and not results, f"{entry} ran without the lock"
    worker.join(timeout=60)
    assert not worker.is_alive() and len(results) == 1


def test_md_calculator_evaluates_under_the_lock(model_file: Path):
    calc = load_md_calculator(model_file, dtype="float32")
    atoms = _labelled_cu()
    atoms.calc = calc
    energies: list[float] = []
    worker = threading.Thread(target=lambda: energies.append(atoms.get_potential_energy()))
    with GLOBALS_LOCK:
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and not energies
    worker.join(timeout=60)
    alone = _labelled_cu()
    alone.calc = load_md_calculator(model_file, dtype="float32")
    assert energies == [alone.get_potential_energy()]


def test_four_threads_load_models_and_score_side_by_side(model_file: Path):
    """The race itself: float32 MD calculators and float64 accuracy in parallel threads (without
    the lock: NameError, AssertionError from torch.fx, now and then)."""
    errors: list[str] = []
    maes: list[float] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                if i % 2:
                    load_md_calculator(model_file, dtype="float32").get_forces(_labelled_cu())
                else:
                    metrics = evaluate_accuracy(model_file, [_labelled_cu()], AccuracySettings())
                    maes.append(metrics["energy_mae_meV_per_atom"])
        except Exception:  # collected: a thread's exception would be lost
            import traceback

            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\n".join(errors))
    assert errors == []
    assert len(maes) == 10 and max(maes) == pytest.approx(min(maes), rel=1e-12)


def test_a_float32_md_calculator_leaves_the_default_dtype_as_it_was(model_file: Path):
    before = torch.get_default_dtype()
    calc = load_md_calculator(model_file, dtype="float32")
    assert torch.get_default_dtype() == before
    assert next(calc.models[0].parameters()).dtype == torch.float32
