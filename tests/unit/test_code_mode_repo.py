"""The code-mode program repository: real git, real files. An accepted diff is a commit on
main, a reverted one a branch; untrusted diffs are refused with a message an agent can act on."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mlipilot.code_mode.diffs import CodeEditError, unified_diff
from mlipilot.code_mode.repo import ProgramRepo
from mlipilot.errors import MlipilotError

TEMPLATE = Path(__file__).parents[2] / "services/mlipilot/code_mode/template"
PROGRAM = "training/program.py"
EDITABLE = (PROGRAM,)
LR = '    "lr": 0.01,\n'


def git(root: Path, *args: str) -> str:
    """Plain git in ``root``, for assertions, with no user configuration."""
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout


def template_text() -> str:
    return (TEMPLATE / PROGRAM).read_text()


def edited(text: str, lr: str = "0.02") -> str:
    assert text.count(LR) == 1
    return text.replace(LR, f'    "lr": {lr},\n')


def line_of(text: str, line: str) -> int:
    return text.split("\n").index(line.rstrip("\n")) + 1


@pytest.fixture
def repo(tmp_path: Path) -> ProgramRepo:
    return ProgramRepo.create(tmp_path / "run" / "program", TEMPLATE, EDITABLE)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> ProgramRepo:
    """One repository for tests that only check diffs (check() changes nothing)."""
    return ProgramRepo.create(tmp_path_factory.mktemp("shared") / "program", TEMPLATE, EDITABLE)


def test_create_commits_the_template(repo: ProgramRepo) -> None:
    assert git(repo.root, "rev-list", "--count", "main").strip() == "1"
    assert repo.head() == git(repo.root, "rev-parse", "HEAD").strip()
    assert repo.files() == {PROGRAM: template_text()}
    assert git(repo.root, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(repo.root, "ls-files").split() == [PROGRAM]
    assert "Baseline training program" in repo.log()
    assert ProgramRepo.open(repo.root, EDITABLE).head() == repo.head()


def test_create_refuses(tmp_path: Path) -> None:
    with pytest.raises(MlipilotError, match=r"training/other\.py is not a regular file"):
        ProgramRepo.create(tmp_path / "a", TEMPLATE, ["training/other.py"])
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(MlipilotError, match="not an empty folder"):
        ProgramRepo.create(tmp_path / "b", TEMPLATE, EDITABLE)
    with pytest.raises(MlipilotError, match="relative to the program folder"):
        ProgramRepo(tmp_path / "c", ["../training/program.py"])


def test_open_refuses_what_is_not_a_program_repo(tmp_path: Path, repo: ProgramRepo) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(MlipilotError, match=re.escape(str(plain))):
        ProgramRepo.open(plain, EDITABLE)
    # A folder inside the repository is not one: git must not find the enclosing one.
    with pytest.raises(MlipilotError, match="not a code-mode program repository"):
        ProgramRepo.open(repo.root / "training", EDITABLE)
    with pytest.raises(MlipilotError, match=r"no regular file training/other\.py"):
        ProgramRepo.open(repo.root, ["training/other.py"])


def test_check_materialize_accept(tmp_path: Path, repo: ProgramRepo) -> None:
    before = repo.head()
    diff = unified_diff(PROGRAM, template_text(), edited(template_text()))
    assert repo.check(diff) == [PROGRAM]
    dest = repo.materialize(diff, tmp_path / "cand" / "program")
    assert (dest / PROGRAM).read_text() == edited(template_text())
    assert not (dest / ".git").exists()
    assert (repo.materialize(None, tmp_path / "base") / PROGRAM).read_text() == template_text()
    assert repo.head() == before  # check and materialize change nothing

    sha = repo.accept(
        diff, "Higher lr converges faster", {"Ledger-Row": "42", "Candidate": "it003"}
    )
    assert repo.head() == sha != before
    assert git(repo.root, "rev-parse", "main~1").strip() == before
    message = git(repo.root, "log", "-1", "--format=%B", "main")
    assert message == "Higher lr converges faster\n\nLedger-Row: 42\nCandidate: it003\n\n"
    trailers = git(repo.root, "log", "-1", "--format=%(trailers:key=Ledger-Row,valueonly)")
    assert trailers.strip() == "42"
    assert repo.files() == {PROGRAM: edited(template_text())}
    assert (repo.root / PROGRAM).read_text() == edited(template_text())
    assert git(repo.root, "status", "--porcelain") == ""


def test_keep_reverted_leaves_main_alone(repo: ProgramRepo) -> None:
    head, files = repo.head(), repo.files()
    diff = unified_diff(PROGRAM, template_text(), edited(template_text(), "0.5"))
    sha = repo.keep_reverted(diff, "reverted/it004", "Much higher lr", {"Ledger-Row": "7"})
    assert repo.head() == head
    assert repo.files() == files
    assert (repo.root / PROGRAM).read_text() == template_text()
    assert git(repo.root, "status", "--porcelain") == ""
    assert git(repo.root, "rev-parse", "reverted/it004").strip() == sha
    assert git(repo.root, "rev-parse", "reverted/it004~1").strip() == head
    assert git(repo.root, "show", f"{sha}:{PROGRAM}") == edited(template_text(), "0.5")
    log = repo.log()
    assert "reverted/it004" in log and "Much higher lr" in log and "Baseline" in log
    assert "Much higher lr" not in repo.log(all_branches=False)
    # Off an older commit (the one the candidate was tried on) after main moved on.
    repo.accept(unified_diff(PROGRAM, template_text(), edited(template_text())), "lr", {})
    other = edited(template_text(), "0.3")
    old = repo.keep_reverted(
        unified_diff(PROGRAM, template_text(), other), "r2", "m", {}, base=head
    )
    assert git(repo.root, "rev-parse", f"{old}~1").strip() == head


def test_git_failures_name_the_command(repo: ProgramRepo) -> None:
    diff = unified_diff(PROGRAM, template_text(), edited(template_text()))
    repo.keep_reverted(diff, "r1", "first", {})
    with pytest.raises(MlipilotError, match=r"git update-ref .*refs/heads/r1"):
        repo.keep_reverted(diff, "r1", "again", {})
    with pytest.raises(MlipilotError, match="not a valid new branch name"):
        repo.keep_reverted(diff, "bad..name", "m", {})
    with pytest.raises(MlipilotError, match="trailer"):
        repo.accept(diff, "m", {"Ledger Row": "1"})
    with pytest.raises(MlipilotError, match="trailer"):
        repo.accept(diff, "m", {"Ledger-Row": "1\nInjected: yes"})


def test_accept_refuses_a_dirty_work_tree(repo: ProgramRepo) -> None:
    head = repo.head()
    (repo.root / PROGRAM).write_text(template_text() + "# local change\n")
    diff = unified_diff(PROGRAM, template_text(), edited(template_text()))
    with pytest.raises(MlipilotError, match="read-tree"):
        repo.accept(diff, "m", {})
    assert repo.head() == head
    assert (repo.root / PROGRAM).read_text().endswith("# local change\n")


def _stale(text: str) -> str:
    return unified_diff(PROGRAM, edited(text, "0.05"), edited(text, "0.07"))


def _syntax(text: str) -> str:
    return unified_diff(PROGRAM, text, text.replace(LR, '    "lr": 0.01,,\n'))


def _rename(text: str) -> str:
    return (
        f"diff --git a/{PROGRAM} b/training/prog2.py\nsimilarity index 100%\n"
        f"rename from {PROGRAM}\nrename to training/prog2.py\n"
    )


def _mode(text: str) -> str:
    return f"diff --git a/{PROGRAM} b/{PROGRAM}\nold mode 100644\nnew mode 100755\n"


def _new_file(text: str) -> str:
    return f"--- /dev/null\n+++ b/{PROGRAM}\n@@ -0,0 +1 @@\n+x = 1\n"


def _new_file_git(text: str) -> str:
    return f"diff --git a/{PROGRAM} b/{PROGRAM}\nnew file mode 100644\n" + _new_file(text)


def _deleted_file(text: str) -> str:
    return f"--- a/{PROGRAM}\n+++ /dev/null\n@@ -1 +0,0 @@\n-x = 1\n"


def _truncated(text: str) -> str:
    diff = unified_diff(PROGRAM, text, edited(text))
    return diff.replace('\n     "scheduler_patience"', "\nscheduler_patience")


REFUSED: list[tuple[str, Callable[[str], str], str]] = [
    ("prose", lambda t: "Raise the learning rate to 0.02.", "not a unified diff"),
    ("empty", lambda t: "  \n", "empty"),
    ("hunk without file header", lambda t: "@@ -1,2 +1,2 @@\n-a\n+b\n", "no '--- a/PATH'"),
    ("headers without hunk", lambda t: f"--- a/{PROGRAM}\n+++ b/{PROGRAM}\n-a\n+b\n", "line 3"),
    ("bad hunk header", lambda t: f"--- a/{PROGRAM}\n+++ b/{PROGRAM}\n@@ @@\n-a\n", "not a hunk"),
    (
        "not editable",
        lambda t: unified_diff("training/other.py", "a\n", "b\n"),
        r"training/other\.py is not editable; a diff may only change lines of training/program",
    ),
    ("dotdot", lambda t: unified_diff("../../etc/passwd", "a\n", "b\n"), "leaves the program"),
    ("absolute", lambda t: "--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "absolute"),
    ("dot git", lambda t: unified_diff(".git/config", "a\n", "b\n"), "inside .git"),
    ("new file", _new_file, "/dev/null: it creates a file"),
    ("new file, git style", _new_file_git, "line 2 of the diff .* creates a file"),
    ("deleted file", _deleted_file, "/dev/null: it deletes a file"),
    ("rename", _rename, r"renames training/program\.py to training/prog2\.py"),
    (
        "rename by headers",
        lambda t: unified_diff(PROGRAM, t, edited(t)).replace(f"+++ b/{PROGRAM}", "+++ b/x.py"),
        r"renames training/program\.py to x\.py",
    ),
    ("mode change", _mode, "changes a file's mode"),
    ("binary", lambda t: f"diff --git a/{PROGRAM} b/{PROGRAM}\nGIT binary patch\n", "binary"),
    ("stale", _stale, r'does not apply .*: line 8 of the diff \(.*"lr": 0\.05'),
    ("syntax error", _syntax, "PLACEHOLDER"),
    ("context only", lambda t: unified_diff(PROGRAM, t, t + "x\n")[:-3], "hunk changes nothing"),
    (
        "same line out and in",
        lambda t: unified_diff(PROGRAM, t, edited(t)).replace("0.02", "0.01"),
        "the diff changes nothing",
    ),
    (
        "truncated hunk",
        _truncated,
        r"line 10 of the diff is neither in a hunk .*'scheduler_patience",
    ),
]


@pytest.mark.parametrize(("make", "why"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_check_refuses(shared: ProgramRepo, make: Callable[[str], str], why: str) -> None:
    text = template_text()
    if why == "PLACEHOLDER":  # the syntax error: its line number
        why = rf"^training/program\.py, line {line_of(text, LR)}: .*\n.*0\.01,,"
    with pytest.raises(CodeEditError, match=why):
        shared.check(make(text))


def test_stale_after_an_accepted_edit(repo: ProgramRepo) -> None:
    text = template_text()
    first = unified_diff(PROGRAM, text, edited(text, "0.02"))
    second = unified_diff(PROGRAM, text, edited(text, "0.03"))
    repo.accept(first, "m", {})
    with pytest.raises(CodeEditError, match=r'does not apply(.|\n)*"lr": 0\.01'):
        repo.check(second)


def test_llm_style_diff_is_accepted(shared: ProgramRepo, tmp_path: Path) -> None:
    """Wrong line numbers and counts, no a/ b/ prefixes, an empty line for an unchanged blank
    line, CRLF, prose and a Markdown fence: the body is right, so the edit is what it says."""
    text = template_text()
    after = edited(text).replace("    random.seed(seed)\n", "    random.seed(seed + 1)\n")
    good = unified_diff(PROGRAM, text, after)
    assert good.count("@@ -") == 2
    sloppy = re.sub(r"@@ -\d+(,\d+)? \+\d+(,\d+)? @@", "@@ -1,99 +1,2 @@", good)
    sloppy = sloppy.replace(f"a/{PROGRAM}", PROGRAM).replace(f"b/{PROGRAM}", PROGRAM)
    sloppy = sloppy.replace("\n \n", "\n\n")
    fenced = f"Here is my edit:\r\n\r\n```diff\r\n{sloppy}```\r\n\r\nIt:\r\n- raises lr\r\n"
    assert shared.check(fenced) == [PROGRAM]
    dest = shared.materialize(fenced, tmp_path / "llm")
    assert (dest / PROGRAM).read_text() == after
    # A fence around something else than the diff: the diff is read from the whole text.
    assert shared.check(f"Instead of\n```python\nlr = 0.01\n```\nthis:\n{good}") == [PROGRAM]


def test_wrong_counts_only(shared: ProgramRepo, tmp_path: Path) -> None:
    """Decided: hunk header counts are recounted from the body, as git apply --recount does."""
    text = template_text()
    good = unified_diff(PROGRAM, text, edited(text))
    start = line_of(text, LR) - 3
    wrong = re.sub(r"@@ .* @@", f"@@ -{start},4 +{start},9 @@", good)
    assert wrong != good
    assert shared.check(wrong) == [PROGRAM]
    assert (shared.materialize(wrong, tmp_path / "w") / PROGRAM).read_text() == edited(text)


def test_hunk_without_trailing_context_says_so(shared: ProgramRepo) -> None:
    text = template_text()
    n = line_of(text, LR)
    diff = f'--- a/{PROGRAM}\n+++ b/{PROGRAM}\n@@ -{n},1 +{n},2 @@\n {LR.rstrip()}\n+    "x": 1,\n'
    with pytest.raises(CodeEditError, match="no unchanged lines after its last change"):
        shared.check(diff)


def test_unified_diff_round_trips_without_final_newline(repo: ProgramRepo, tmp_path: Path) -> None:
    text = template_text()
    after = edited(text) + "# no newline at the end"
    diff = unified_diff(PROGRAM, text, after)
    assert "\\ No newline at end of file" in diff
    assert unified_diff(PROGRAM, text, text) == ""
    assert (repo.materialize(diff, tmp_path / "nl") / PROGRAM).read_text() == after


def test_user_git_config_does_not_matter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failing hooks, commit signing and a leaked GIT_DIR in the user's environment."""
    home = tmp_path / "home"
    hooks = home / "hooks"
    hooks.mkdir(parents=True)
    for name in ("pre-commit", "commit-msg", "post-commit", "reference-transaction"):
        (hooks / name).write_text("#!/bin/sh\necho hook ran >&2\nexit 1\n")
        (hooks / name).chmod(0o755)
    config = home / ".gitconfig"
    config.write_text(
        f"[core]\n\thooksPath = {hooks}\n[commit]\n\tgpgSign = true\n[gpg]\n\tprogram = false\n"
        "[user]\n\tname = U\n\temail = u@example.org\n\tsigningKey = nobody\n"
        "[init]\n\tdefaultBranch = trunk\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    # The configuration does break a plain commit.
    plain = tmp_path / "plain"
    subprocess.run(["git", "init", "-q", str(plain)], check=True, capture_output=True)
    commit = ["git", "-C", str(plain), "commit", "-q", "--allow-empty", "-m", "x"]
    assert subprocess.run(commit, capture_output=True).returncode != 0
    monkeypatch.setenv("GIT_DIR", str(plain / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(plain))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "elsewhere-index"))

    repo = ProgramRepo.create(tmp_path / "program", TEMPLATE, EDITABLE)
    diff = unified_diff(PROGRAM, template_text(), edited(template_text()))
    repo.keep_reverted(diff, "reverted", "kept", {})
    sha = repo.accept(diff, "hypothesis", {"Ledger-Row": "1"})
    assert repo.head() == sha
    assert repo.files() == {PROGRAM: edited(template_text())}
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    monkeypatch.delenv("GIT_INDEX_FILE")
    assert git(repo.root, "rev-parse", "main").strip() == sha
    assert git(repo.root, "status", "--porcelain") == ""
    assert list((plain / ".git" / "refs" / "heads").iterdir()) == []


def _marker_script(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A script that creates a marker file when something runs it: (script, marker)."""
    marker = tmp_path / f"{name}-ran"
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\ncat\n")
    script.chmod(0o755)
    return script, marker


def test_a_repository_config_that_would_run_a_program_is_refused(
    tmp_path: Path, repo: ProgramRepo
) -> None:
    """Attack: core.fsmonitor in the repository's own .git/config names a script, which git
    ran when mlipilot refreshed the index. mlipilot refuses the repository, naming the key,
    and nothing runs; with the key removed, the same repository works again."""
    script, marker = _marker_script(tmp_path, "fsmonitor")
    config = repo.root / ".git" / "config"
    clean = config.read_text()
    config.write_text(clean + f"[core]\n\tfsmonitor = {script}\n")
    diff = unified_diff(PROGRAM, template_text(), edited(template_text()))
    with pytest.raises(MlipilotError, match=r"its \.git/config sets core\.fsmonitor") as refused:
        repo.accept(diff, "hypothesis", {})
    assert str(repo.root) in str(refused.value) and "git runs programs" in str(refused.value)
    with pytest.raises(MlipilotError, match=r"core\.fsmonitor"):
        ProgramRepo.open(repo.root, EDITABLE)
    assert not marker.exists()
    config.write_text(clean)
    assert repo.accept(diff, "hypothesis", {}) == repo.head()
    assert not marker.exists()


@pytest.mark.parametrize(
    "section",
    [
        '[filter "lfs"]\n\tclean = {script}\n\tsmudge = {script}\n',
        "[include]\n\tpath = {config}\n",
        "[core]\n\tsshCommand = {script}\n",
        "[extensions]\n\tworktreeConfig = true\n",
        "[alias]\n\tst = !{script}\n",
    ],
    ids=["filter", "include", "sshCommand", "worktreeConfig", "alias"],
)
def test_any_key_beyond_what_git_init_writes_is_refused(
    tmp_path: Path, repo: ProgramRepo, section: str
) -> None:
    script, marker = _marker_script(tmp_path, "driver")
    other = tmp_path / "other.config"
    other.write_text(f"[core]\n\tfsmonitor = {script}\n")
    with (repo.root / ".git" / "config").open("a") as fh:
        fh.write(section.format(script=script, config=other))
    (repo.root / ".gitattributes").write_text("* filter=lfs diff=lfs\n")
    with pytest.raises(MlipilotError, match=r"\.git/config sets .*remove those keys"):
        repo.files()
    assert not marker.exists()


def test_attributes_alone_name_no_command(tmp_path: Path, repo: ProgramRepo) -> None:
    """.git/info/attributes and .gitattributes can name a filter or diff driver, but only
    config gives a driver a command, and no config here can: git runs nothing."""
    script, marker = _marker_script(tmp_path, "attributes")
    (repo.root / ".git" / "info").mkdir(exist_ok=True)
    (repo.root / ".git" / "info" / "attributes").write_text("* filter=evil diff=evil merge=evil\n")
    (repo.root / ".gitattributes").write_text(f"* filter=evil ident\n# {script}\n")
    diff = unified_diff(PROGRAM, template_text(), edited(template_text()))
    repo.keep_reverted(diff, "reverted", "kept", {})
    sha = repo.accept(diff, "hypothesis", {})
    assert repo.head() == sha
    assert (repo.materialize(None, tmp_path / "m") / PROGRAM).read_text() == edited(template_text())
    assert not marker.exists()


def test_a_git_folder_that_points_elsewhere_is_refused(tmp_path: Path, repo: ProgramRepo) -> None:
    """A commondir or a .git that is a symlink makes git read another folder's config."""
    (repo.root / ".git" / "commondir").write_text(str(tmp_path / "elsewhere"))
    with pytest.raises(MlipilotError, match="commondir"):
        repo.head()
    (repo.root / ".git" / "commondir").unlink()
    repo.head()
    moved = tmp_path / "real-git"
    (repo.root / ".git").rename(moved)
    (repo.root / ".git").symlink_to(moved)
    with pytest.raises(MlipilotError, match=r"\.git is not a plain folder"):
        repo.head()


def test_the_config_check_runs_once_per_change_of_the_file(
    repo: ProgramRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting(cmd: list[str], *args: object, **kwargs: object) -> object:
        calls.append(cmd)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting)
    fresh = ProgramRepo.open(repo.root, EDITABLE)
    for _ in range(3):
        fresh.head()
    checks = [c for c in calls if c[1:3] == ["config", "--file"]]
    assert len(checks) == 1 and len(calls) > 3
    config = repo.root / ".git" / "config"
    config.write_text(config.read_text() + "\n")  # same keys, a new stat
    fresh.head()
    assert len([c for c in calls if c[1:3] == ["config", "--file"]]) == 2


def test_accept_off_an_older_base_makes_main_the_program_that_trained(repo: ProgramRepo) -> None:
    """Asynchronous campaigns: a candidate tried on an older main is accepted after another
    edit was. Main becomes its base with its diff (what trained and won), a child of main."""
    text, base = template_text(), repo.head()
    moved = repo.accept(unified_diff(PROGRAM, text, edited(text, "0.02")), "first", {})
    late = unified_diff(PROGRAM, text, edited(text, "0.03"))  # made from the old main
    with pytest.raises(CodeEditError):
        repo.accept(late, "onto main as it is", {})  # does not apply on the moved main
    sha = repo.accept(late, "second", {"Candidate": "it002"}, base=base)
    assert repo.head() == sha
    assert git(repo.root, "rev-parse", "main~1").strip() == moved  # history kept, linear
    assert repo.files() == {PROGRAM: edited(text, "0.03")}
    assert (repo.root / PROGRAM).read_text() == edited(text, "0.03")
    assert git(repo.root, "status", "--porcelain") == ""
    with pytest.raises(MlipilotError, match="not a full commit sha"):
        repo.accept(late, "m", {}, base="main~2")
