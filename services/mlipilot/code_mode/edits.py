"""Code edits an MLIP practitioner would make to the training program, without an LLM.

In code mode an agent changes ``training/program.py`` by unified diff. The rule-based
researcher does the same with the few edits below, which mirror what the paper's agents
found: a progressive (two-stage) schedule, a loss-function change and an lr schedule. Each
edit is a plain text transformation keyed on exact anchor lines of the template program: when
an anchor is gone (an LLM rewrote that part) the edit refuses with EditNotApplicable, and each
leaves a marker comment (``# code-edit: <name>``) so that it is never applied twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlipilot.code_mode.diffs import unified_diff
from mlipilot.code_mode.program_files import PROGRAM
from mlipilot.errors import MlipilotError
from mlipilot.scoring.result import ENERGY, FORCES, MD, ScoreResult

MARKER = "# code-edit: "  # + the edit's name, on a line each edit adds

# The template's lines each edit keys on (exact, indentation included) and their replacement.
EPOCH_LOOP = """\
    for epoch in range(job["epochs"]):
"""
TWO_STAGE = """\
    for epoch in range(job["epochs"]):
        if epoch == max(1, job["epochs"] * 60 // 100):  # code-edit: two-stage-schedule
            # Stage two (MACE's stage two / SWA): forces are in place, now fit the energies.
            job = {**job, "energy_weight": 100.0 * job["energy_weight"]}
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.best = scheduler.mode_worse  # the loss changed scale: start over
                scheduler.num_bad_epochs = 0
            print(
                f"stage two from epoch {epoch}: energy_weight {job['energy_weight']:g}, "
                f"lr {optimizer.param_groups[0]['lr']:g}",
                flush=True,
            )
"""
LOSS_RETURN = """\
    return job["energy_weight"] * energy + job["forces_weight"] * forces
"""
FORCE_NORM = """\
    # code-edit: force-norm-loss: the mean over atoms of |F_pred - F_ref|, weighted like forces
    force_norm = torch.mean(torch.linalg.vector_norm(out["forces"] - batch.forces, dim=-1))
    return job["energy_weight"] * energy + job["forces_weight"] * (forces + force_norm)
"""
PLATEAU = """\
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=job["lr_factor"], patience=job["scheduler_patience"]
    )
"""
COSINE = """\
    # code-edit: cosine-lr: anneal the lr to zero over the epoch budget
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=job["epochs"])
"""
PLATEAU_STEP = """\
        scheduler.step(valid_loss)
"""
COSINE_STEP = """\
        scheduler.step()
"""


class EditNotApplicable(MlipilotError):
    """The program lacks the edit's anchor, or already carries the edit."""


@dataclass(frozen=True)
class CodeEdit:
    name: str  # e.g. "two-stage-schedule"
    applies: Callable[[str, ScoreResult], bool]  # (program text, incumbent result)
    edit: Callable[[str], str]  # program text -> edited text, or EditNotApplicable
    hypothesis: Callable[[ScoreResult], str]  # the reason, quoting metrics with units


def _inaccurate(result: ScoreResult) -> bool:
    return result.fails(ENERGY) or result.fails(FORCES)


def _worst(result: ScoreResult, kind: str) -> str:
    """The worst constraint of ``kind`` as ``value unit (limit op threshold)``, or n/a."""
    found = result.constraints_on(kind)
    if not found:
        return "n/a"
    c = min(found, key=lambda c: c.margin)
    return f"{c.value:.3g} {c.unit} (limit {c.op} {c.threshold:g})"


def _applied(text: str, name: str) -> bool:
    return f"{MARKER}{name}" in text


def _splice(text: str, name: str, anchor: str, new: str) -> str:
    """``text`` with the lines ``anchor`` (found exactly once) replaced by ``new``."""
    lines = text.splitlines(keepends=True)
    bare = [line.rstrip("\r\n") for line in lines]
    want = anchor.splitlines()
    n = len(want)
    at = [i for i in range(len(bare) - n + 1) if bare[i : i + n] == want]
    if len(at) != 1:
        found = "not found" if not at else f"found {len(at)} times"
        raise EditNotApplicable(f"{name}: anchor {want[0].strip()!r} {found} in {PROGRAM}")
    i = at[0]
    return "".join([*lines[:i], new, *lines[i + n :]])


def _replacing(name: str, *pairs: tuple[str, str]) -> Callable[[str], str]:
    """The edit that replaces each (anchor, new) in turn and refuses a program it edited."""

    def edit(text: str) -> str:
        if _applied(text, name):
            raise EditNotApplicable(f"{PROGRAM} already carries the {name} edit")
        for anchor, new in pairs:
            text = _splice(text, name, anchor, new)
        return text

    return edit


def _two_stage_hypothesis(result: ScoreResult) -> str:
    return (
        f"Energy MAE is {_worst(result, ENERGY)}: with forces weighted 100:1 the energy is "
        "barely fitted. A stage two over the last 40 % of the epochs (MACE's stage two / SWA "
        "idea), energy weight x100 and lr x0.1, fits the energies once the force field is in "
        "place, without undoing it."
    )


def _force_norm_hypothesis(result: ScoreResult) -> str:
    md = f"MD fails (survival {_worst(result, MD)}) while f" if result.fails(MD) else "F"
    return (
        f"{md}orce MAE is {_worst(result, FORCES)}. An MSE over force components under-weights "
        "atoms whose error vector is large in all directions, and those are the ones that "
        "break MD. Adding the mean per-atom norm of the force error (as in MACE's L1-L2 loss) "
        "keeps pulling on them where the squared components are already small."
    )


def _cosine_hypothesis(result: ScoreResult) -> str:
    return (
        f"Accuracy fails (energy MAE {_worst(result, ENERGY)}, force MAE "
        f"{_worst(result, FORCES)}): ReduceLROnPlateau lowers the lr only after "
        "`scheduler_patience` epochs without progress, so within a short fixed budget the run "
        "ends at a high, noisy step. A cosine schedule over the epochs ends at a small lr and "
        "settles into the minimum it found."
    )


def _applies(name: str, when: Callable[[ScoreResult], bool]) -> Callable[[str, ScoreResult], bool]:
    return lambda text, result: when(result) and not _applied(text, name)


CODE_EDITS: list[CodeEdit] = [
    CodeEdit(
        "two-stage-schedule",
        _applies("two-stage-schedule", lambda r: r.fails(ENERGY) or r.feasible),
        _replacing("two-stage-schedule", (EPOCH_LOOP, TWO_STAGE)),
        _two_stage_hypothesis,
    ),
    CodeEdit(
        "force-norm-loss",
        _applies("force-norm-loss", lambda r: r.fails(FORCES) or r.fails(MD) or r.feasible),
        _replacing("force-norm-loss", (LOSS_RETURN, FORCE_NORM)),
        _force_norm_hypothesis,
    ),
    CodeEdit(
        "cosine-lr",
        _applies("cosine-lr", _inaccurate),
        _replacing("cosine-lr", (PLATEAU, COSINE), (PLATEAU_STEP, COSINE_STEP)),
        _cosine_hypothesis,
    ),
]


def propose_code_edit(
    program: Mapping[str, str], result: ScoreResult, tried: Callable[[str], bool]
) -> tuple[str, str, str] | None:
    """(name, hypothesis, unified diff of PROGRAM) of the first edit in CODE_EDITS that
    applies to ``result``, finds its anchors, changes the text and whose edited text was not
    ``tried``; None when none is left. ``program`` maps paths to file texts."""
    if PROGRAM not in program:
        raise MlipilotError(f"the program has no {PROGRAM}; its files: {sorted(program)}")
    text = program[PROGRAM]
    for code_edit in CODE_EDITS:
        if not code_edit.applies(text, result):
            continue
        try:
            edited = code_edit.edit(text)
        except EditNotApplicable:
            continue
        if edited == text or tried(edited):
            continue
        return code_edit.name, code_edit.hypothesis(result), unified_diff(PROGRAM, text, edited)
    return None
