"""Run a validation suite: every group for the model and for the reference, then the checks.

The reference (EMT for Cu) goes through the same code as the model, so a check compares like
with like; an error in the model's computation (a relaxation that blows up, an EOS without a
minimum) is recorded against its group's checks, which fail, and the rest goes on. An error in
the reference's is a bug in the suite and raises.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ase.calculators.emt import EMT
from ase.data import atomic_numbers

from mlipilot.errors import MlipilotError
from mlipilot.validation import crystal, dynamics, smoothness
from mlipilot.validation.result import (
    CalculatorFactory,
    CheckResult,
    GroupRun,
    Measured,
    Measurements,
    SuiteRef,
    ValidationResult,
)
from mlipilot.validation.suite import Check, ValidationSuite

# group name -> (function, measured at the calculator's own a0 rather than the suite's cell)
RUNNERS: dict[str, tuple[Callable[..., Measured], bool]] = {
    "equation_of_state": (crystal.equation_of_state, True),
    "elastic": (crystal.elastic, True),
    "vacancy": (crystal.vacancy, True),
    "surfaces": (crystal.surfaces, True),
    "phonons": (crystal.phonons, True),
    "heating_ramp": (dynamics.heating_ramp, False),
    "nve": (dynamics.nve, False),
    "smoothness": (smoothness.smoothness, False),
}
DEFAULT_SEARCH_FRACTION = 0.1  # without an EOS group: where a0 is looked for
Progress = Callable[[str], None]


def package_calculator(
    path: Path, element: str = "Cu", device: str = "cpu", dtype: str = "float64"
) -> CalculatorFactory:
    """A model package as a calculator factory (one stress-free MACE calculator, reused: ASE
    recomputes whenever the atoms differ from the last call's); refused unless the model
    knows ``element``."""
    from mlipilot.scoring.md_stability import load_md_calculator

    calc = load_md_calculator(path, device, dtype)  # type: ignore[arg-type]
    known = sorted(int(z) for z in calc.z_table.zs)
    if atomic_numbers[element] not in known:
        raise MlipilotError(
            f"model package {path}: a model for atomic numbers {known}, not {element} "
            f"({atomic_numbers[element]})"
        )
    return lambda: calc


def _a0(factory: CalculatorFactory, suite: ValidationSuite) -> float:
    eos = suite.equation_of_state
    search = eos.search_fraction if eos is not None else DEFAULT_SEARCH_FRACTION
    return crystal.equilibrium_lattice(factory, suite.element, suite.lattice_a_A, search)


def _run_group(
    name: str, factory: CalculatorFactory, suite: ValidationSuite, a0: float | None, why_not: str
) -> GroupRun:
    """One group for one calculator; exceptions become the group's error."""
    func, at_a0 = RUNNERS[name]
    start = time.perf_counter()
    try:
        if at_a0 and a0 is None:
            raise ValueError(f"no equilibrium lattice constant: {why_not}")
        a = a0 if at_a0 else suite.lattice_a_A
        measured = func(factory, suite.element, a, getattr(suite, name))
        error = None
    except Exception as exc:  # a broken model may fail anywhere; the report goes on
        measured, error = Measured(), f"{type(exc).__name__}: {exc}"
    return GroupRun(
        values=measured.values,
        curves=measured.curves,
        notes=measured.notes,
        error=error,
        wall_s=time.perf_counter() - start,
    )


def measure(
    factory: CalculatorFactory,
    suite: ValidationSuite,
    *,
    sha256: str,
    who: str,
    progress: Progress | None = None,
) -> Measurements:
    """Every group of ``suite`` for one calculator (``who`` names it in the record)."""
    say = progress or (lambda _: None)
    start = time.perf_counter()
    try:
        a0, why_not = _a0(factory, suite), None
    except Exception as exc:  # recorded; every static group says so
        a0, why_not = None, f"{type(exc).__name__}: {exc}"
    runs = {}
    for name in suite.groups():
        runs[name] = run = _run_group(name, factory, suite, a0, why_not or "")
        say(f"{who}: {name} {run.wall_s:.1f} s" + (f" ({run.error})" if run.error else ""))
    return Measurements(
        who=who,
        suite_sha256=sha256,
        lattice_a0_A=a0,
        lattice_error=why_not,
        groups=runs,
        wall_s=time.perf_counter() - start,
    )


def _check(metric: str, group: str, check: Check, model: GroupRun, ref: GroupRun) -> CheckResult:
    value, reference = model.values.get(metric), ref.values.get(metric)
    error = relative = None
    if value is not None and reference is not None:
        error = value - reference
        relative = error / abs(reference) if reference else None
    note = "; ".join([*([model.error] if model.error else []), *model.notes])
    return CheckResult(
        metric=metric,
        group=group,
        value=value,
        reference=reference,
        error=error,
        relative_error=relative,
        kind=check.kind,
        tolerance=check.tolerance,
        tolerance_text=check.describe(),
        unit=check.unit,
        why=check.why,
        passed=check.passes(value, reference),
        wall_s=model.wall_s,
        note=note,
    )


def validate(
    calculator_factory: CalculatorFactory,
    suite: ValidationSuite,
    *,
    sha256: str,
    suite_file: str = "",
    model: str = "model",
    reference_factory: CalculatorFactory = EMT,
    reference: str = "ASE EMT",
    reference_measurements: Measurements | None = None,
    progress: Progress | None = None,
) -> ValidationResult:
    """Measure every group of ``suite`` with the model and the reference; judge each check.

    ``sha256`` is the suite file's (``load_suite`` returns it). The reference runs first (a
    suite its own reference fails is a bug: RuntimeError before the model's longer run);
    ``reference_measurements`` from an earlier ``measure`` of the same suite skip it.
    ``progress`` gets a line per group and calculator.
    """
    ref = reference_measurements
    if ref is None:
        ref = measure(reference_factory, suite, sha256=sha256, who=reference, progress=progress)
    elif ref.suite_sha256 != sha256:
        raise ValueError(f"reference measurements of suite sha256 {ref.suite_sha256}, not {sha256}")
    broken = {name: run.error for name, run in ref.groups.items() if run.error}
    if ref.lattice_a0_A is None or broken:
        raise RuntimeError(
            f"the reference {ref.who} fails suite {suite.name}: "
            f"{ref.lattice_error or ''} {broken or ''}".strip()
        )
    measured = measure(calculator_factory, suite, sha256=sha256, who=model, progress=progress)
    checks = [
        _check(metric, group, check, measured.groups[group], ref.groups[group])
        for metric, (group, check) in suite.checks().items()
    ]
    torch: Any = sys.modules.get("torch")
    return ValidationResult(
        suite=SuiteRef(name=suite.name, version=suite.version, sha256=sha256, file=suite_file),
        checks=checks,
        model=measured,
        reference=ref,
        torch_threads=torch.get_num_threads() if torch is not None else None,
    )
