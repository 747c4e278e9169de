"""A validation suite: fixed, versioned data naming the physics an accepted model is checked on.

A suite lives in ``validation/*.yaml`` (beside ``scorecard/``). Like a scorecard spec it is
validated by one pydantic model (unknown keys refused) and hashed into every result, and no
tolerance lives in code: each check states its own, with its unit and why.

Each group of properties (equation of state, elastic constants, ...) holds the parameters of
its computation and a ``checks`` mapping from the metrics it produces to their tolerances. A
group left out of a suite is not run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from mlipilot.yaml_files import load_yaml_model

Kind = Literal["absolute", "relative", "max", "min"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Check(_Strict):
    """One tolerance. ``absolute``: |value - reference| <= absolute; ``relative``:
    |value - reference| <= relative x |reference|; ``max``/``min``: a bound on the value
    itself (the reference is shown beside it, not compared)."""

    absolute: float | None = Field(None, ge=0)
    relative: float | None = Field(None, ge=0)
    max: float | None = None
    min: float | None = None
    unit: str = Field(min_length=1)
    why: str = Field(min_length=1)

    @model_validator(mode="after")
    def _one_tolerance(self) -> Check:
        given = [k for k in ("absolute", "relative", "max", "min") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a check needs exactly one of 'absolute', 'relative', 'max' or 'min'"
                + (f", got {given}" if given else "")
            )
        return self

    @property
    def kind(self) -> Kind:
        for k in ("absolute", "relative", "max", "min"):
            if getattr(self, k) is not None:
                return k  # type: ignore[return-value]
        raise AssertionError("validated: one tolerance is set")

    @property
    def tolerance(self) -> float:
        return getattr(self, self.kind)

    def passes(self, value: float | None, reference: float | None) -> bool:
        """False for a missing or non-finite value (or reference, where one is compared)."""
        if value is None or value != value or abs(value) == float("inf"):
            return False
        kind, tol = self.kind, self.tolerance
        if kind == "max":
            return value <= tol
        if kind == "min":
            return value >= tol
        if reference is None or reference != reference:
            return False
        error = abs(value - reference)
        return error <= tol if kind == "absolute" else error <= tol * abs(reference)

    def describe(self) -> str:
        """The tolerance as a table shows it: ``± 0.02 Å``, ``± 10 %``, ``≤ 5 meV/atom/ps``."""
        tol = self.tolerance
        if self.kind == "relative":
            return f"± {tol * 100:g} %"
        sign = {"absolute": "±", "max": "≤", "min": "≥"}[self.kind]
        return f"{sign} {tol:g} {self.unit}"


class _Group(_Strict):
    """Parameters of one computation and the checks on the metrics it produces."""

    METRICS: ClassVar[tuple[str, ...]] = ()
    checks: dict[str, Check] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_metrics(self) -> _Group:
        unknown = sorted(set(self.checks) - set(self.METRICS))
        if unknown:
            raise ValueError(
                f"checks: unknown metric(s) {unknown}; this group measures {list(self.METRICS)}"
            )
        return self


class EquationOfState(_Group):
    """E(V) of the conventional cell around the calculator's own minimum (ase.eos)."""

    METRICS = ("lattice_constant_A", "bulk_modulus_GPa")
    search_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="the minimum is searched within lattice_a_A x (1 ± this)"
    )
    strain: float = Field(gt=0, lt=0.2, description="lattice constant a0 x (1 ± strain)")
    points: int = Field(ge=5)
    eos: Literal["birchmurnaghan", "murnaghan", "vinet", "sj"] = "birchmurnaghan"


class Elastic(_Group):
    """Cubic elastic constants from the energy of small homogeneous strains at a0."""

    METRICS = ("c11_GPa", "c12_GPa", "c44_GPa")
    max_strain: float = Field(gt=0, le=0.05)
    points: int = Field(ge=5)


class Relaxation(_Strict):
    fmax_eV_per_A: PositiveFloat
    max_steps: PositiveInt


class Vacancy(_Group):
    """Relaxed vacancy formation energy in an n x n x n conventional supercell at a0."""

    METRICS = ("vacancy_formation_eV",)
    supercell: int = Field(ge=2)
    relax: Relaxation


SURFACE_METRICS = {
    "100": "surface_energy_100_J_per_m2",
    "110": "surface_energy_110_J_per_m2",
    "111": "surface_energy_111_J_per_m2",
}


class Surfaces(_Group):
    """Relaxed 1x1 slabs at a0, symmetric, energies against the bulk energy per atom at a0."""

    METRICS = tuple(SURFACE_METRICS.values())
    layers: dict[Literal["100", "110", "111"], int] = Field(min_length=1)
    vacuum_A: float = Field(gt=0, description="on each side of the slab")
    relax: Relaxation

    @model_validator(mode="after")
    def _layers_for_every_check(self) -> Surfaces:
        checked = [f for f, m in SURFACE_METRICS.items() if m in self.checks]
        missing = [f for f in checked if f not in self.layers]
        if missing:
            raise ValueError(f"layers: no layer count for the checked facet(s) {missing}")
        if any(n < 3 for n in self.layers.values()):
            raise ValueError(f"layers: at least 3 per slab, got {dict(self.layers)}")
        return self


PHONON_METRICS = ("phonon_X_TA_THz", "phonon_X_LA_THz", "phonon_L_TA_THz", "phonon_L_LA_THz")


class Phonons(_Group):
    """Finite-displacement phonons (ase.phonons) of the primitive cell at a0."""

    METRICS = PHONON_METRICS
    supercell: int = Field(ge=2, description="n x n x n primitive cells; even: X and L exact")
    displacement_A: float = Field(gt=0, le=0.05)


class HeatingRamp(_Group):
    """Langevin NVT whose target temperature rises linearly, at fixed volume, with the
    scorecard's failure tests (non-finite, closest approach, temperature runaway)."""

    METRICS = ("ramp_failure_free_K", "ramp_heat_capacity_kB", "ramp_final_order")
    supercell: int = Field(ge=1)
    start_K: PositiveFloat
    end_K: PositiveFloat
    steps: int = Field(ge=20)
    timestep_fs: PositiveFloat
    friction_per_fs: PositiveFloat
    seed: int = Field(ge=0)
    min_distance_A: PositiveFloat
    max_temperature_factor: float = Field(gt=1)
    bins: int = Field(10, ge=3, description="heat capacity: fit over this many step bins")
    trace_every: PositiveInt = 10

    @model_validator(mode="after")
    def _a_ramp(self) -> HeatingRamp:
        if self.end_K <= self.start_K:
            raise ValueError(f"end_K {self.end_K} must exceed start_K {self.start_K}")
        bound = self.checks.get("ramp_failure_free_K")
        if bound is not None and bound.min is not None and bound.min > self.end_K:
            raise ValueError(
                f"checks.ramp_failure_free_K: min {bound.min} is above end_K {self.end_K}, "
                "which no calculator can reach"
            )
        if self.steps < 2 * self.bins:
            raise ValueError(f"steps {self.steps}: at least 2 per bin ({self.bins} bins)")
        return self


class NVE(_Group):
    """Velocity Verlet from Maxwell-Boltzmann velocities at 2T (equipartition halves it)."""

    METRICS = ("nve_drift_meV_per_atom_per_ps",)
    supercell: int = Field(ge=1)
    temperature_K: PositiveFloat
    steps: int = Field(ge=10)
    timestep_fs: PositiveFloat
    seed: int = Field(ge=0)
    min_distance_A: PositiveFloat
    trace_every: PositiveInt = 10


class VolumeCurve(_Strict):
    lo: float = Field(gt=0.5, lt=1, description="from lattice_a_A x lo ...")
    hi: float = Field(gt=1, lt=2, description="... to lattice_a_A x hi")
    points: int = Field(ge=10)


class PairCurve(_Strict):
    supercell: int = Field(ge=2, description="conventional cells: the pushed atom's crystal")
    to_A: float = Field(gt=0.5, description="closest distance the pushed atom reaches")
    step_A: float = Field(gt=0, le=0.05)


class Smoothness(_Group):
    """E(a) of the conventional cell over a wide range, and one atom pushed along [110]
    towards its nearest neighbour: no extrema the reference lacks, forces that integrate to
    the energy."""

    METRICS = ("volume_curve_extrema", "pair_curve_extrema", "pair_force_mismatch_eV_per_A")
    volume: VolumeCurve
    pair: PairCurve
    flat_eV: float = Field(
        gt=0, description="energy steps smaller than this are flat: no sign, no extremum"
    )


GROUPS = (
    "equation_of_state",
    "elastic",
    "vacancy",
    "surfaces",
    "phonons",
    "heating_ramp",
    "nve",
    "smoothness",
)


class ValidationSuite(_Strict):
    """A crystal suite (the default kind): an fcc metal against its reference potential."""

    kind: Literal["crystal"] = "crystal"
    name: str = Field(min_length=1)
    version: int = Field(ge=1)
    description: str = ""
    element: Literal["Cu"] = Field(description="fcc metals only for now")
    lattice_a_A: PositiveFloat = Field(
        description="the data's lattice constant: the EOS search's centre, the MD and "
        "smoothness cells"
    )
    equation_of_state: EquationOfState | None = None
    elastic: Elastic | None = None
    vacancy: Vacancy | None = None
    surfaces: Surfaces | None = None
    phonons: Phonons | None = None
    heating_ramp: HeatingRamp | None = None
    nve: NVE | None = None
    smoothness: Smoothness | None = None

    @model_validator(mode="after")
    def _something_to_check(self) -> ValidationSuite:
        if not self.groups():
            raise ValueError(f"no group of checks; give at least one of {list(GROUPS)}")
        return self

    def groups(self) -> dict[str, _Group]:
        """The suite's groups, in the order they run."""
        found = {name: getattr(self, name) for name in GROUPS}
        return {name: group for name, group in found.items() if group is not None}

    def checks(self) -> dict[str, tuple[str, Check]]:
        """Every check by metric: (group, check), in the order the groups run."""
        return {m: (g, c) for g, group in self.groups().items() for m, c in group.checks.items()}


class MoleculeSelection(_Strict):
    """Held-out molecules: the last ``last`` of the shipped QM7-like list (campaigns take theirs
    from its start), RDKit-embedded and relaxed at the reference level; their minima are where
    every group starts, for the model and the reference alike."""

    last: int = Field(ge=1, le=100)
    max_atoms: int = Field(30, ge=2, description="larger molecules are skipped")
    embed_seed: int = Field(0, ge=0)
    relax: Relaxation


class MolecularNVT(_Group):
    """Langevin NVT of each held-out molecule from its reference minimum, hotter and longer
    than the scorecard's, judged by Fu et al.'s criterion: a bond that deviates from its start
    length by more than ``max_bond_deviation_A``, or a molecule that comes apart, is a failure."""

    METRICS = ("nvt_stable_fraction", "nvt_max_bond_deviation_A")
    temperature_K: PositiveFloat
    steps: int = Field(ge=10)
    timestep_fs: PositiveFloat
    friction_per_fs: PositiveFloat
    seed: int = Field(ge=0)
    max_bond_deviation_A: PositiveFloat = 0.5
    bond_factor: float = Field(1.2, gt=1, le=2)
    fragment_factor: float = Field(1.5, gt=1, le=5)
    trace_every: PositiveInt = 10


class Geometry(_Group):
    """Each held-out molecule relaxed by the calculator from the reference minimum: how far
    its bonds end up from the reference's (the reference's own drift is ~0)."""

    METRICS = ("geometry_bond_mae_A", "geometry_max_bond_error_A")
    relax: Relaxation


class Vibrations(_Group):
    """Harmonic frequencies by central differences of the forces at the calculator's own
    minimum, paired mode by mode (sorted) with the reference's."""

    METRICS = ("frequency_mae_cm1", "imaginary_modes")
    displacement_A: float = Field(gt=0, le=0.05)
    relax: Relaxation
    imaginary_below_cm1: PositiveFloat = Field(
        50.0, description="a mode below minus this counts as imaginary (numerical noise above)"
    )


MOLECULE_GROUPS = ("geometry", "vibrations", "nvt")


class MoleculeSuite(_Strict):
    """A molecular suite: held-out molecules against the data's label level."""

    kind: Literal["molecules"]
    name: str = Field(min_length=1)
    version: int = Field(ge=1)
    description: str = ""
    level: Literal["gfn2-xtb"] = Field(
        description="the reference: the quick level's GFN2-xTB (tblite); B3LYP frequencies "
        "and long runs are beyond what its labels cost here"
    )
    molecules: MoleculeSelection
    geometry: Geometry | None = None
    vibrations: Vibrations | None = None
    nvt: MolecularNVT | None = None

    @model_validator(mode="after")
    def _something_to_check(self) -> MoleculeSuite:
        if not self.groups():
            raise ValueError(f"no group of checks; give at least one of {list(MOLECULE_GROUPS)}")
        return self

    def groups(self) -> dict[str, _Group]:
        found = {name: getattr(self, name) for name in MOLECULE_GROUPS}
        return {name: group for name, group in found.items() if group is not None}

    def checks(self) -> dict[str, tuple[str, Check]]:
        return {m: (g, c) for g, group in self.groups().items() for m, c in group.checks.items()}


AnySuite = ValidationSuite | MoleculeSuite


class _SuiteKind(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: Literal["crystal", "molecules"] = "crystal"


def suite_elements(suite: AnySuite) -> list[str]:
    """The elements a model must know to be validated on ``suite`` (a molecular suite takes
    the held-out molecules made of the model's elements)."""
    return [suite.element] if isinstance(suite, ValidationSuite) else []


# The suites campaigns may name: the repository's validation/ (services/mlipilot/validation/
# suite.py -> the repository root), or where $MLIPILOT_VALIDATION_SUITES says (an installed
# package, as in the image).
SUITES_DIR = Path(
    os.environ.get("MLIPILOT_VALIDATION_SUITES")
    or Path(__file__).resolve().parents[3] / "validation"
)


def find_suite(suite: str, suites_dir: Path = SUITES_DIR) -> Path:
    """A suite file given by path, or by name in ``suites_dir`` (``cu-emt``)."""
    from mlipilot.errors import MlipilotError

    if suite.endswith((".yaml", ".yml")) or "/" in suite:
        return Path(suite)
    path = suites_dir / f"{suite}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in suites_dir.glob("*.yaml"))
        raise MlipilotError(f"no validation suite {suite!r} in {suites_dir}; known: {known}")
    return path


def load_suite(path: str | Path) -> tuple[AnySuite, str]:
    """Load and validate a suite (its ``kind`` says which: crystal by default, or
    molecules); return it with the sha256 of the file's bytes."""
    head, _ = load_yaml_model(path, _SuiteKind, "validation suite")
    kind = MoleculeSuite if head.kind == "molecules" else ValidationSuite
    return load_yaml_model(path, kind, "validation suite")
