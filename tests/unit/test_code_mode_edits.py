"""Code mode's rule-based edits of the training program, on the real template text."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from factories import make_spec

from mlipilot.code_mode.edits import (
    CODE_EDITS,
    PROGRAM,
    CodeEdit,
    EditNotApplicable,
    propose_code_edit,
    unified_diff,
)
from mlipilot.errors import MlipilotError
from mlipilot.scoring.result import ScoreResult

TEMPLATE = Path(__file__).parents[2] / "services/mlipilot/code_mode/template"
TEXT = (TEMPLATE / PROGRAM).read_text()
ENERGY = "energy_mae_meV_per_atom"
FORCES = "force_mae_meV_per_A"
MD = "md_survival_fraction"
SPEC = make_spec(
    "code-edits-unit",
    [
        {"metric": ENERGY, "max": 5.0, "unit": "meV/atom"},
        {"metric": FORCES, "max": 100.0, "unit": "meV/Å"},
        {"metric": MD, "min": 1.0, "unit": "fraction"},
    ],
    {ENERGY: 1.0, FORCES: 1.0},
)
GOOD = {ENERGY: 2.0, FORCES: 80.0, MD: 1.0}
BAD = {ENERGY: 50.0, FORCES: 400.0, MD: 0.25}
BY_NAME = {e.name: e for e in CODE_EDITS}


def scored(*failing: str) -> ScoreResult:
    metrics = {k: (BAD[k] if k in failing else GOOD[k]) for k in GOOD}
    return ScoreResult.judged(SPEC, metrics, spec_hash="s", test_hash="t")


def never(text: str) -> bool:
    return False


def git_apply_check(tmp_path: Path, diff: str, files: dict[str, str] | None = None) -> None:
    """``git apply --check`` of ``diff`` on a repository holding the template program."""
    repo = tmp_path / "repo"
    (repo / PROGRAM).parent.mkdir(parents=True)
    for path, text in (files or {PROGRAM: TEXT}).items():
        (repo / path).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "template"], check=True)
    (repo / "edit.diff").write_text(diff)
    done = subprocess.run([*git, "apply", "--check", "edit.diff"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_edits_are_the_three_named_in_order() -> None:
    assert [e.name for e in CODE_EDITS] == ["two-stage-schedule", "force-norm-loss", "cosine-lr"]


@pytest.mark.parametrize("code_edit", CODE_EDITS, ids=lambda e: e.name)
def test_each_edit_changes_the_template_into_a_program_that_compiles(
    code_edit: CodeEdit, tmp_path: Path
) -> None:
    edited = code_edit.edit(TEXT)
    assert edited != TEXT
    assert f"# code-edit: {code_edit.name}" in edited
    compile(edited, PROGRAM, "exec", dont_inherit=True)
    git_apply_check(tmp_path, unified_diff(PROGRAM, TEXT, edited))


@pytest.mark.parametrize("code_edit", CODE_EDITS, ids=lambda e: e.name)
def test_an_edit_is_never_applied_twice(code_edit: CodeEdit) -> None:
    edited = code_edit.edit(TEXT)
    with pytest.raises(EditNotApplicable, match="already carries"):
        code_edit.edit(edited)
    assert not code_edit.applies(edited, scored(ENERGY, FORCES))
    assert not code_edit.applies(edited, scored())


def test_the_edits_stack_in_any_order_and_compile(tmp_path: Path) -> None:
    for order in (CODE_EDITS, CODE_EDITS[::-1]):
        text = TEXT
        for code_edit in order:
            text = code_edit.edit(text)
        compile(text, PROGRAM, "exec", dont_inherit=True)
        assert all(f"# code-edit: {e.name}" in text for e in CODE_EDITS)
    git_apply_check(tmp_path, unified_diff(PROGRAM, TEXT, text))


def test_two_stage_switches_at_sixty_percent_of_the_epochs() -> None:
    edited = BY_NAME["two-stage-schedule"].edit(TEXT)
    loop = edited.index('    for epoch in range(job["epochs"]):\n')
    switch = edited.index('        if epoch == max(1, job["epochs"] * 60 // 100):')
    assert switch == loop + len('    for epoch in range(job["epochs"]):\n')
    assert '"energy_weight": 100.0 * job["energy_weight"]' in edited
    assert 'group["lr"] *= 0.1' in edited
    assert 'f"stage two from epoch {epoch}: energy_weight' in edited


def test_force_norm_adds_a_per_atom_norm_term_to_the_loss() -> None:
    edited = BY_NAME["force-norm-loss"].edit(TEXT)
    loss_fn = edited[edited.index("def loss_fn(") : edited.index("def evaluate(")]
    assert 'torch.linalg.vector_norm(out["forces"] - batch.forces, dim=-1)' in loss_fn
    assert 'job["forces_weight"] * (forces + force_norm)' in loss_fn


def test_cosine_replaces_the_plateau_scheduler_and_its_step() -> None:
    edited = BY_NAME["cosine-lr"].edit(TEXT)
    assert "ReduceLROnPlateau(" not in edited
    assert 'CosineAnnealingLR(optimizer, T_max=job["epochs"])' in edited
    assert "scheduler.step(valid_loss)" not in edited
    assert "        scheduler.step()\n" in edited


@pytest.mark.parametrize("code_edit", CODE_EDITS, ids=lambda e: e.name)
def test_a_missing_anchor_is_refused(code_edit: CodeEdit) -> None:
    with pytest.raises(EditNotApplicable, match="not found"):
        code_edit.edit("import torch\n\nprint('an LLM rewrote everything')\n")


def test_a_partly_rewritten_anchor_is_refused() -> None:
    # The cosine edit needs both the scheduler and its step: without the step, nothing changes.
    text = TEXT.replace("scheduler.step(valid_loss)", "scheduler.step(train_loss)")
    with pytest.raises(EditNotApplicable, match=r"scheduler\.step"):
        BY_NAME["cosine-lr"].edit(text)


@pytest.mark.parametrize(
    ("failing", "first"),
    [
        ((ENERGY,), "two-stage-schedule"),
        ((ENERGY, FORCES), "two-stage-schedule"),
        ((FORCES,), "force-norm-loss"),
        ((), "two-stage-schedule"),  # feasible: both accuracy edits may lower the composite
    ],
)
def test_the_first_edit_follows_the_result(failing: tuple[str, ...], first: str) -> None:
    proposal = propose_code_edit({PROGRAM: TEXT}, scored(*failing), never)
    assert proposal is not None
    name, _, diff = proposal
    assert name == first
    assert diff.startswith(f"diff --git a/{PROGRAM} b/{PROGRAM}\n--- a/{PROGRAM}\n+++ b/")


def test_hypotheses_quote_the_failing_metrics_with_their_units() -> None:
    energy = propose_code_edit({PROGRAM: TEXT}, scored(ENERGY), never)
    assert energy is not None and energy[0] == "two-stage-schedule"
    assert "Energy MAE is 50 meV/atom (limit <= 5)" in energy[1]
    forces = propose_code_edit({PROGRAM: TEXT}, scored(FORCES), never)
    assert forces is not None and forces[0] == "force-norm-loss"
    assert "Force MAE is 400 meV/Å (limit <= 100)" in forces[1]
    both = BY_NAME["cosine-lr"].hypothesis(scored(ENERGY, FORCES))
    assert "energy MAE 50 meV/atom (limit <= 5), force MAE 400 meV/Å (limit <= 100)" in both


def test_md_failing_alone_proposes_the_force_norm_term_only() -> None:
    """Accurate on average but unstable: pull harder on the atoms with large force errors."""
    name, hypothesis, _ = propose_code_edit({PROGRAM: TEXT}, scored(MD), never)
    assert name == "force-norm-loss"
    assert hypothesis.startswith("MD fails (survival")
    force_norm = BY_NAME["force-norm-loss"].edit(TEXT)
    assert propose_code_edit({PROGRAM: TEXT}, scored(MD), lambda t: t == force_norm) is None


def test_a_tried_edit_is_skipped_for_the_next() -> None:
    two_stage = BY_NAME["two-stage-schedule"].edit(TEXT)
    force_norm = BY_NAME["force-norm-loss"].edit(TEXT)
    result = scored(ENERGY, FORCES)
    proposal = propose_code_edit({PROGRAM: TEXT}, result, lambda t: t == two_stage)
    assert proposal is not None and proposal[0] == "force-norm-loss"
    proposal = propose_code_edit({PROGRAM: TEXT}, result, lambda t: t in (two_stage, force_norm))
    assert proposal is not None and proposal[0] == "cosine-lr"
    assert propose_code_edit({PROGRAM: TEXT}, result, lambda t: True) is None


def test_the_proposed_diff_gives_the_edited_text(tmp_path: Path) -> None:
    seen: list[str] = []
    proposal = propose_code_edit({PROGRAM: TEXT}, scored(FORCES), lambda t: seen.append(t) or False)
    assert proposal is not None
    assert seen == [BY_NAME["force-norm-loss"].edit(TEXT)]
    git_apply_check(tmp_path, proposal[2])
    repo = tmp_path / "repo"
    subprocess.run(["git", "-C", str(repo), "apply", "edit.diff"], check=True)
    assert (repo / PROGRAM).read_text() == seen[0]


def test_an_applied_edit_is_not_proposed_again_on_its_own_result() -> None:
    text = BY_NAME["two-stage-schedule"].edit(TEXT)
    proposal = propose_code_edit({PROGRAM: text}, scored(ENERGY), never)
    assert proposal is not None and proposal[0] == "cosine-lr"


def test_an_anchor_an_llm_removed_skips_that_edit() -> None:
    rewritten = TEXT.replace(
        '    return job["energy_weight"] * energy + job["forces_weight"] * forces\n',
        '    return job["energy_weight"] * energy + job["forces_weight"] * forces.sqrt()\n',
    )
    assert rewritten != TEXT
    proposal = propose_code_edit({PROGRAM: rewritten}, scored(FORCES), never)
    assert proposal is not None and proposal[0] == "cosine-lr"
    no_loop = TEXT.replace("for epoch in range(job[", "for epoch in range(0 + job[")
    proposal = propose_code_edit({PROGRAM: no_loop}, scored(ENERGY), never)
    assert proposal is not None and proposal[0] == "cosine-lr"


def test_a_program_without_the_training_file_is_an_error() -> None:
    with pytest.raises(MlipilotError, match=PROGRAM):
        propose_code_edit({"README.md": "hi"}, scored(ENERGY), never)


def test_unified_diff_handles_a_missing_final_newline(tmp_path: Path) -> None:
    before = TEXT.rstrip("\n")
    after = before + "\n# trailing comment"
    assert unified_diff(PROGRAM, before, before) == ""
    diff = unified_diff(PROGRAM, before, after)
    assert "\\ No newline at end of file" in diff
    git_apply_check(tmp_path, diff, {PROGRAM: before})
