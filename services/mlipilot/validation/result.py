"""What a validation run measures and records: plain data, written as ``validation.json``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ase.calculators.calculator import Calculator
from pydantic import BaseModel, ConfigDict

from mlipilot.validation.suite import Kind

# A fresh (or reusable) ASE calculator giving energy and forces; stress is never asked for.
CalculatorFactory = Callable[[], Calculator]


class Curve(BaseModel):
    """One series of a figure: ``y`` against ``x`` (a non-finite value is written as null)."""

    model_config = ConfigDict(frozen=True)

    x: list[float | None]
    y: list[float | None]
    labels: list[str] | None = None  # names of the x values (a band path's special points)


@dataclass
class Measured:
    """What one group's computation found for one calculator.

    ``values`` holds the checked metrics and any others worth recording; ``notes`` say what
    a reader should know about how they were reached (a relaxation that stopped early).
    """

    values: dict[str, float | None] = field(default_factory=dict)
    curves: dict[str, Curve] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class GroupRun(BaseModel):
    """One group run for one calculator: its values and curves, or the error that stopped it."""

    values: dict[str, float | None]
    curves: dict[str, Curve]
    notes: list[str]
    error: str | None = None
    wall_s: float


class CheckResult(BaseModel):
    metric: str
    group: str
    value: float | None
    reference: float | None
    error: float | None  # value - reference
    relative_error: float | None  # (value - reference) / |reference|
    kind: Kind
    tolerance: float
    tolerance_text: str  # "± 0.02 Å", "± 10 %", "≤ 5 meV/atom/ps"
    unit: str
    why: str
    passed: bool
    wall_s: float  # the model's time for the group that produced this metric
    note: str = ""


class Measurements(BaseModel):
    """Every group of one suite run for one calculator."""

    who: str  # the model's path, or the reference's name
    suite_sha256: str
    lattice_a0_A: float | None  # its own equilibrium, where the static properties are taken
    lattice_error: str | None = None  # why there is none
    molecules: list[str] = []  # a molecular suite's held-out molecules, by id
    notes: list[str] = []  # what the suite left out for this model (molecules it cannot run)
    groups: dict[str, GroupRun]
    wall_s: float


class SuiteRef(BaseModel):
    name: str
    version: int
    sha256: str
    file: str


class ValidationResult(BaseModel):
    suite: SuiteRef
    checks: list[CheckResult]
    model: Measurements
    reference: Measurements
    torch_threads: int | None = None

    @property
    def failed(self) -> list[str]:
        return [c.metric for c in self.checks if not c.passed]
