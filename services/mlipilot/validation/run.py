"""Run a validation suite: every group for the model and for the reference, then the checks.

The reference (EMT for Cu) goes through the same code as the model, so a check compares like
with like; an error in the model's computation (a relaxation that blows up, an EOS without a
minimum) is recorded against its group's checks, which fail, and the rest goes on. An error in
the reference's is a bug in the suite and raises.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ase.calculators.emt import EMT
from ase.data import atomic_numbers

from mlipilot.errors import MlipilotError
from mlipilot.validation import crystal, dynamics, molecules, smoothness
from mlipilot.validation.result import (
    CalculatorFactory,
    CheckResult,
    GroupRun,
    Measured,
    Measurements,
    SuiteRef,
    ValidationResult,
)
from mlipilot.validation.suite import AnySuite, Check, MoleculeSuite, ValidationSuite

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
# group name -> function(factory, held-out molecules, group, the reference's run of it)
MOLECULE_RUNNERS: dict[str, Callable[..., Measured]] = {
    "geometry": molecules.geometry,
    "vibrations": molecules.vibrations,
    "nvt": molecules.nvt,
}
DEFAULT_SEARCH_FRACTION = 0.1  # without an EOS group: where a0 is looked for
Progress = Callable[[str], None]
# Runs a crystal suite's groups elsewhere (Ray tasks, validation/ray_groups.py):
# (group names, a0, why there is none) -> each group's run, by name. None: one after another here.
GroupFanOut = Callable[[list[str], "float | None", str], dict[str, GroupRun]]
# Which fan-out measures the model ("model") and which the reference ("reference").
FanOuts = Callable[[str], "GroupFanOut | None"]


def package_calculator(
    path: Path, elements: Sequence[str] = ("Cu",), device: str = "cpu", dtype: str = "float64"
) -> CalculatorFactory:
    """A model package as a calculator factory (one stress-free MACE calculator, reused: ASE
    recomputes whenever the atoms differ from the last call's); refused unless the model
    knows every one of ``elements``."""
    from mlipilot.scoring.md_stability import load_md_calculator

    calc = load_md_calculator(path, device, dtype)  # type: ignore[arg-type]
    known = sorted(int(z) for z in calc.z_table.zs)
    missing = [e for e in elements if atomic_numbers[e] not in known]
    if missing:
        raise MlipilotError(
            f"model package {path}: a model for atomic numbers {known}, not {missing} "
            f"({[atomic_numbers[e] for e in missing]})"
        )
    return lambda: calc


def known_numbers(factory: CalculatorFactory) -> set[int] | None:
    """The atomic numbers a MACE calculator knows (its z_table); None (any) for others."""
    table = getattr(factory(), "z_table", None)
    return None if table is None else {int(z) for z in table.zs}


def reference_for(suite: AnySuite) -> tuple[CalculatorFactory, str]:
    """The suite's reference calculator and its name: the data's labels."""
    if isinstance(suite, MoleculeSuite):
        calc = molecules.XtbCalculator()
        return (lambda: calc), "GFN2-xTB (tblite)"
    return EMT, "ASE EMT"


def _a0(factory: CalculatorFactory, suite: ValidationSuite) -> float:
    eos = suite.equation_of_state
    search = eos.search_fraction if eos is not None else DEFAULT_SEARCH_FRACTION
    return crystal.equilibrium_lattice(factory, suite.element, suite.lattice_a_A, search)


def run_group(
    name: str, factory: CalculatorFactory, suite: ValidationSuite, a0: float | None, why_not: str
) -> GroupRun:
    """One group for one calculator; exceptions become the group's error."""
    func, at_a0 = RUNNERS[name]

    def compute() -> Measured:
        if at_a0 and a0 is None:
            raise ValueError(f"no equilibrium lattice constant: {why_not}")
        a = a0 if at_a0 else suite.lattice_a_A
        return func(factory, suite.element, a, getattr(suite, name))

    return _timed(compute)


def _timed(compute: Callable[[], Measured]) -> GroupRun:
    """A group's computation, timed; an exception becomes the group's error."""
    start = time.perf_counter()
    try:
        measured, error = compute(), None
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
    suite: AnySuite,
    *,
    sha256: str,
    who: str,
    progress: Progress | None = None,
    held_out: list[molecules.HeldOut] | None = None,
    reference: Measurements | None = None,
    fan_out: GroupFanOut | None = None,
) -> Measurements:
    """Every group of ``suite`` for one calculator (``who`` names it in the record). A
    molecular suite runs on ``held_out`` and pairs with ``reference`` where a group compares
    mode by mode (None: this is the reference). A crystal suite's groups run through
    ``fan_out`` when given (side by side, elsewhere), else one after another here."""
    say = progress or (lambda _: None)
    start = time.perf_counter()
    if isinstance(suite, MoleculeSuite):
        if not held_out:
            raise ValueError("a molecular suite is measured on held-out molecules")
        runs = {}
        for name, group in suite.groups().items():
            theirs = reference.groups.get(name) if reference is not None else None
            runs[name] = run = _run_molecule_group(name, factory, held_out, group, theirs)
            say(f"{who}: {name} {run.wall_s:.1f} s" + (f" ({run.error})" if run.error else ""))
        return Measurements(
            who=who,
            suite_sha256=sha256,
            lattice_a0_A=None,
            molecules=[m.mol_id for m in held_out],
            groups=runs,
            wall_s=time.perf_counter() - start,
        )
    try:
        a0, why_not = _a0(factory, suite), None
    except Exception as exc:  # recorded; every static group says so
        a0, why_not = None, f"{type(exc).__name__}: {exc}"
    names = list(suite.groups())
    if fan_out is not None:
        runs = fan_out(names, a0, why_not or "")
        for name, run in runs.items():
            say(f"{who}: {name} {run.wall_s:.1f} s" + (f" ({run.error})" if run.error else ""))
    else:
        runs = {}
        for name in names:
            runs[name] = run = run_group(name, factory, suite, a0, why_not or "")
            say(f"{who}: {name} {run.wall_s:.1f} s" + (f" ({run.error})" if run.error else ""))
    return Measurements(
        who=who,
        suite_sha256=sha256,
        lattice_a0_A=a0,
        lattice_error=why_not,
        groups=runs,
        wall_s=time.perf_counter() - start,
    )


def _run_molecule_group(
    name: str,
    factory: CalculatorFactory,
    held_out: list[molecules.HeldOut],
    group: Any,
    reference: GroupRun | None,
) -> GroupRun:
    return _timed(lambda: MOLECULE_RUNNERS[name](factory, held_out, group, reference))


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
    suite: AnySuite,
    *,
    sha256: str,
    suite_file: str = "",
    model: str = "model",
    reference_factory: CalculatorFactory | None = None,
    reference: str | None = None,
    reference_measurements: Measurements | None = None,
    progress: Progress | None = None,
    fan_outs: FanOuts | None = None,
) -> ValidationResult:
    """Measure every group of ``suite`` with the model and the reference; judge each check.

    ``sha256`` is the suite file's (``load_suite`` returns it). The reference is the suite's
    own (``reference_for``) unless given. It runs first (a suite its own reference fails is a
    bug: RuntimeError before the model's longer run); ``reference_measurements`` from an
    earlier ``measure`` of the same suite skip it. ``progress`` gets a line per group and
    calculator. ``fan_outs`` runs a crystal suite's groups elsewhere (``ray_groups``).
    """
    choose = fan_outs or (lambda who: None)
    default_factory, default_name = reference_for(suite)
    reference_factory = reference_factory or default_factory
    reference = reference or default_name
    held_out, left_out = None, []
    if isinstance(suite, MoleculeSuite):
        numbers = known_numbers(calculator_factory)
        held_out, left_out = molecules.held_out_molecules(
            suite.molecules, numbers, reference_factory
        )
    ref = reference_measurements
    if ref is None:
        ref = measure(
            reference_factory,
            suite,
            sha256=sha256,
            who=reference,
            progress=progress,
            held_out=held_out,
            fan_out=choose("reference"),
        )
    elif ref.suite_sha256 != sha256:
        raise ValueError(f"reference measurements of suite sha256 {ref.suite_sha256}, not {sha256}")
    elif held_out is not None and ref.molecules != [m.mol_id for m in held_out]:
        raise ValueError(f"reference measurements of molecules {ref.molecules}, not these")
    broken = {name: run.error for name, run in ref.groups.items() if run.error}
    if (isinstance(suite, ValidationSuite) and ref.lattice_a0_A is None) or broken:
        raise RuntimeError(
            f"the reference {ref.who} fails suite {suite.name}: "
            f"{ref.lattice_error or ''} {broken or ''}".strip()
        )
    measured = measure(
        calculator_factory,
        suite,
        sha256=sha256,
        who=model,
        progress=progress,
        held_out=held_out,
        reference=ref,
        fan_out=choose("model"),
    )
    measured.notes = left_out
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
