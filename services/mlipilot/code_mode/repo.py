"""The code-mode program repository: a campaign's training program under git.

In code mode an agent edits the training program (``training/program.py``) by proposing a
unified diff. The program lives in a git repository in the campaign's run folder, whose
``git log`` reads as the campaign's research history:

- ``main`` holds the baseline and every accepted edit, one commit each. The message is the
  hypothesis; ``Key: value`` trailers link it to the ledger (``Ledger-Row: 42``);
- a reverted edit is committed on a branch of its own off the commit it was tried on. It is
  kept there without touching ``main``, the index or the work tree.

Diffs are LLM output, so untrusted. ``check`` parses a diff itself and refuses, with a message
an agent can act on, anything but hunks that change existing editable files in place: new,
deleted, renamed, copied or binary files, mode changes, paths outside the folder or not
editable. Only the hunks it parsed, rendered again, reach ``git apply``, which applies them to a
scratch index (never to a file); the changed ``.py`` files must then compile. Git runs with a
clean environment and no user or system configuration, so the hooks, signing setup or
``GIT_DIR`` of whoever runs the campaign never change what happens.
"""

from __future__ import annotations

import difflib
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mlipilot.code_mode.program_files import PARSE_LOCK
from mlipilot.errors import MlipilotError, clipped, shown

MAIN = "refs/heads/main"
MAX_DIFF_BYTES = 1 << 20
MAX_STDERR_BYTES = 4000  # of git's stderr quoted in a message
GIT_TIMEOUT_S = 120.0
REGULAR_MODES = ("100644", "100755")
# Every git command gets these, over whatever the repository's own config says.
GIT_CONFIG = (
    "user.name=mlipilot",
    "user.email=mlipilot@localhost",
    "commit.gpgsign=false",
    "tag.gpgsign=false",
    f"core.hooksPath={os.devnull}",
    f"core.excludesFile={os.devnull}",
    f"core.attributesFile={os.devnull}",
    "core.autocrlf=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "init.defaultBranch=main",
)
_TRAILER_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_HUNK = re.compile(r"@@ -(\d{1,9})(?:,\d+)? \+(\d{1,9})(?:,\d+)? @@")
_GIT_HEADER = re.compile(r"diff --git (\S+) (\S+)")
# Lines of git's extended headers that do more than change lines of a file.
_REFUSED = (
    ("new file mode", "creates a file"),
    ("deleted file mode", "deletes a file"),
    ("old mode", "changes a file's mode"),
    ("new mode", "changes a file's mode"),
    ("rename from", "renames a file"),
    ("rename to", "renames a file"),
    ("copy from", "copies a file"),
    ("copy to", "copies a file"),
    ("similarity index", "renames or copies a file"),
    ("dissimilarity index", "rewrites a file whole"),
    ("GIT binary patch", "is a binary patch"),
    ("Binary files", "is a binary patch"),
)
_HUNK_FORMAT = (
    "a hunk starts with '@@ -OLD_LINE,OLD_COUNT +NEW_LINE,NEW_COUNT @@' and each of its lines "
    "with ' ' (unchanged), '-' (removed) or '+' (added)"
)


class CodeEditError(MlipilotError):
    """A proposed diff that cannot be tried; the message says why, for the agent to fix it."""


# ---- parsing a diff ----------------------------------------------------------------------


@dataclass
class _Hunk:
    line: int  # of its header in the diff, from 1
    old_start: int
    new_start: int
    body: list[tuple[int, str]] = field(default_factory=list)  # (line in the diff, text)

    def counts(self) -> tuple[int, int]:
        """Lines before and after, counted from the body: header counts are not trusted."""
        kinds = [text[:1] for _, text in self.body]
        return sum(k in ("", " ", "-") for k in kinds), sum(k in ("", " ", "+") for k in kinds)

    def before(self) -> list[str]:
        """The unchanged and removed lines, as in the file."""
        return [text[1:] for _, text in self.body if text[:1] in ("", " ", "-")]

    def trailing(self) -> int:
        """Unchanged lines after the last change."""
        kinds = [text[:1] for _, text in self.body if text[:1] != "\\"]
        changes = [i for i, kind in enumerate(kinds) if kind in ("+", "-")]
        return len(kinds) - 1 - changes[-1] if changes else len(kinds)


@dataclass
class _FilePatch:
    line: int
    path: str
    hunks: list[_Hunk] = field(default_factory=list)


def _only(editable: Sequence[str]) -> str:
    return (
        f"a diff may only change lines of {', '.join(editable)} "
        "(no new, deleted, renamed or binary files, no mode changes)"
    )


def _numbered_lines(diff: str) -> list[tuple[int, str]]:
    """The diff's lines with their numbers; only those in fenced blocks holding a diff, if any."""
    if not diff.strip():
        raise CodeEditError("the diff is empty")
    try:
        size = len(diff.encode())
    except UnicodeEncodeError as exc:
        raise CodeEditError(f"the diff is not valid text: {exc}") from None
    if size > MAX_DIFF_BYTES:
        raise CodeEditError(f"the diff has {size} bytes, more than {MAX_DIFF_BYTES}")
    if "\0" in diff:
        raise CodeEditError("the diff contains a NUL character")
    numbered = list(enumerate(diff.replace("\r\n", "\n").split("\n"), start=1))
    if any(text.startswith("```") for _, text in numbered):
        # Diff lines always start with a prefix character, so a line starting with ``` is a
        # Markdown fence: prose around the fenced diff (an LLM's explanation) is ignored.
        blocks: list[list[tuple[int, str]]] = []
        block: list[tuple[int, str]] | None = None
        for n, text in numbered:
            if text.startswith("```"):
                if block is not None:
                    blocks.append(block)
                block = None if block is not None else []
            elif block is not None:
                block.append((n, text))
        blocks.append(block or [])
        heads = ("--- ", "+++ ", "@@", "diff --git ")
        fenced = [line for b in blocks if any(t.startswith(heads) for _, t in b) for line in b]
        numbered = fenced or numbered  # no diff in a fence: the fences are in the prose
    while numbered and not numbered[-1][1]:
        numbered.pop()
    return numbered


def _safe_path(name: str, n: int) -> str:
    if not name:
        raise CodeEditError(f"line {n} of the diff names no file")
    if name.startswith("/") or re.match(r"[A-Za-z]:[\\/]", name):
        raise CodeEditError(f"line {n} of the diff: {shown(name)} is an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise CodeEditError(f"line {n} of the diff: {shown(name)} leaves the program folder")
    if ".git" in parts:
        raise CodeEditError(f"line {n} of the diff: {shown(name)} is inside .git")
    return posixpath.normpath(name)


def _header_name(raw: str, prefix: str, n: int, editable: Sequence[str]) -> str:
    name = raw.split("\t", 1)[0].strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1]
    if name == "/dev/null":
        what = "creates" if prefix == "a/" else "deletes"
        raise CodeEditError(
            f"line {n} of the diff names /dev/null: it {what} a file; " + _only(editable)
        )
    return _safe_path(name.removeprefix(prefix), n)


def _file_path(old: str, new: str, n: int, editable: Sequence[str]) -> str:
    if old != new:
        raise CodeEditError(f"line {n} of the diff renames {old} to {new}; {_only(editable)}")
    if old not in editable:
        raise CodeEditError(f"line {n} of the diff: {old} is not editable; {_only(editable)}")
    return old


def _other_line(text: str, n: int, started: bool, editable: Sequence[str]) -> None:
    """A line outside hunks and file headers: fine before the diff starts, else an error."""
    for prefix, what in _REFUSED:
        if text.startswith(prefix):
            raise CodeEditError(f"line {n} of the diff ({shown(text)}) {what}; {_only(editable)}")
    if started and text.strip() and not text.startswith(("index ", "diff ")):
        raise CodeEditError(
            f"line {n} of the diff is neither in a hunk nor a file header: {shown(text)}; "
            + _HUNK_FORMAT
        )


def _parse(diff: str, editable: Sequence[str]) -> list[_FilePatch]:
    """The diff's file patches, or CodeEditError naming the line of the diff at fault."""
    lines = _numbered_lines(diff)
    patches: list[_FilePatch] = []
    pending: tuple[int, str] | None = None  # a 'diff --git' header awaiting its ---/+++ lines
    hunk: _Hunk | None = None
    i = 0
    while i < len(lines):
        n, text = lines[i]
        header = text.startswith("--- ") and i + 1 < len(lines) and lines[i + 1][1][:4] == "+++ "
        if hunk is not None and not header and text[:1] in ("", " ", "+", "-", "\\"):
            hunk.body.append((n, text))
            i += 1
            continue
        hunk = None
        if header:
            old = _header_name(text[4:], "a/", n, editable)
            new = _header_name(lines[i + 1][1][4:], "b/", n + 1, editable)
            path = _file_path(old, new, n, editable)
            if pending is not None and pending[1] != path:
                raise CodeEditError(f"line {n} of the diff: {path} differs from line {pending[0]}")
            patches.append(_FilePatch(n, path))
            pending = None
            i += 2
            continue
        if text.startswith("@@"):
            if not patches or pending is not None:
                raise CodeEditError(
                    f"line {n} of the diff: hunk {shown(text)} has no '--- a/PATH' and "
                    "'+++ b/PATH' file header lines before it"
                )
            hunk = _hunk_header(text, n)
            patches[-1].hunks.append(hunk)
        elif text.startswith("diff --git "):
            _no_pending(pending)
            pending = (n, _git_header_path(text, n, editable))
        else:
            _other_line(text, n, bool(patches) or pending is not None, editable)
        i += 1
    _no_pending(pending)
    return _checked(patches, editable)


def _hunk_header(text: str, n: int) -> _Hunk:
    match = _HUNK.match(text)
    if match is None:
        raise CodeEditError(
            f"line {n} of the diff: {shown(text)} is not a hunk header; {_HUNK_FORMAT} "
            "(the counts may be off: they are recounted)"
        )
    return _Hunk(n, int(match[1]), int(match[2]))


def _git_header_path(text: str, n: int, editable: Sequence[str]) -> str:
    match = _GIT_HEADER.fullmatch(text.strip())
    if match is None:
        raise CodeEditError(
            f"line {n} of the diff: cannot read {shown(text)} as 'diff --git a/PATH b/PATH'"
        )
    old = _safe_path(match[1].removeprefix("a/"), n)
    return _file_path(old, _safe_path(match[2].removeprefix("b/"), n), n, editable)


def _no_pending(pending: tuple[int, str] | None) -> None:
    if pending is not None:
        raise CodeEditError(
            f"line {pending[0]} of the diff: 'diff --git' header without '--- a/PATH' and "
            "'+++ b/PATH' lines and hunks"
        )


def _checked(patches: list[_FilePatch], editable: Sequence[str]) -> list[_FilePatch]:
    if not patches:
        raise CodeEditError(
            "not a unified diff: no '--- a/PATH' line followed by a '+++ b/PATH' line; "
            f"{_only(editable)}, e.g.\n--- a/{editable[0]}\n+++ b/{editable[0]}\n"
            "@@ -36,3 +36,3 @@\n an unchanged line\n-a removed line\n+an added line\n"
            " an unchanged line"
        )
    for patch in patches:
        if not patch.hunks:
            raise CodeEditError(
                f"line {patch.line} of the diff: {patch.path} has no hunks; {_HUNK_FORMAT}"
            )
        for hunk in patch.hunks:
            # An empty line ends a hunk when nothing of it follows: diff tools write an unchanged
            # empty line as ' ', so these are the blank lines an LLM puts between parts.
            while hunk.body and hunk.body[-1][1] == "":
                hunk.body.pop()
            if not any(text[:1] in ("+", "-") for _, text in hunk.body):
                raise CodeEditError(
                    f"line {hunk.line} of the diff: the hunk changes nothing (no '-' or '+' lines)"
                )
            if not hunk.before():
                raise CodeEditError(
                    f"line {hunk.line} of the diff: the hunk has no unchanged or removed lines "
                    "to find its place by; add the unchanged lines around the added ones"
                )
    return patches


def _place(patch: _FilePatch, text: str) -> None:
    """Set each hunk's line numbers to the nearest place its unchanged and removed lines are.

    LLM diffs often get line numbers wrong. ``git apply`` searches near the stated line anyway,
    except that a hunk stated at line 1 must match the file's top; placing hunks where their
    lines are makes that a fact, not a guess. A hunk whose lines are nowhere is left for git to
    refuse. (Counts are recounted when rendering: the body says them, whatever the header says;
    this is what ``git apply --recount`` does, but that treats the next file's ``---`` line as
    a removed line.)
    """
    lines = text.split("\n")
    shift = 0  # lines added minus removed by the earlier hunks: where git looks for this one
    for hunk in patch.hunks:
        before = hunk.before()
        starts = [
            i + 1
            for i, line in enumerate(lines[: len(lines) - len(before) + 1])
            if line == before[0] and lines[i : i + len(before)] == before
        ]
        if starts:
            hunk.old_start = min(starts, key=lambda start: abs(start - hunk.old_start))
        hunk.new_start = hunk.old_start + shift
        old, new = hunk.counts()
        shift += new - old


def _render(patches: list[_FilePatch]) -> bytes:
    out: list[str] = []
    for patch in patches:
        path = patch.path
        out += [f"diff --git a/{path} b/{path}", f"--- a/{path}", f"+++ b/{path}"]
        for hunk in patch.hunks:
            old, new = hunk.counts()
            out.append(f"@@ -{hunk.old_start},{old} +{hunk.new_start},{new} @@")
            out += [text or " " for _, text in hunk.body]
    return ("\n".join(out) + "\n").encode()


def _not_applying(patches: list[_FilePatch], texts: Mapping[str, str], base: str, err: str) -> str:
    """Why the diff does not apply: the failing hunk's line that is not in the file, if any."""
    hint = ""
    failed = re.search(r"patch failed: (.+):(\d+)$", err, re.MULTILINE)
    for patch in patches:
        for hunk in patch.hunks:
            if failed and (patch.path, hunk.old_start) == (failed[1], int(failed[2])):
                hint = _hunk_hint(patch.path, hunk, texts[patch.path])
    paths = ", ".join(sorted({patch.path for patch in patches}))
    return (
        f"the diff does not apply to {paths} as it is on main ({base[:12]})"
        + (f": {hint}" if hint else ".")
        + f"\ngit apply says: {clipped(err.strip(), MAX_STDERR_BYTES)}\n"
        "Unchanged (' ') and removed ('-') lines must be copied exactly from the current file, "
        "indentation and blank lines included."
    )


def _hunk_hint(path: str, hunk: _Hunk, text: str) -> str:
    have = set(text.split("\n"))
    for n, line in hunk.body:
        if line[:1] in ("", " ", "-") and line[1:] not in have:
            return f"line {n} of the diff ({shown(line)}) is not in {path}."
    where = f"the hunk at line {hunk.line} of the diff"
    if hunk.trailing() == 0:
        return (
            f"{where} has no unchanged lines after its last change, so it must end at the end "
            f"of {path}; add the unchanged lines that follow."
        )
    return f"the lines of {where} are each in {path}, but not together in this order."


def _syntax_error(path: str, source: bytes) -> str | None:
    """``training/program.py, line N: <message>`` when the file does not compile."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings: not errors, and not ours to print
            with PARSE_LOCK:
                compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        text = (exc.text or "").strip()
        return f"{path}, line {exc.lineno}: {exc.msg}" + (f"\n    {text}" if text else "")
    except (ValueError, RecursionError, MemoryError) as exc:
        return f"{path}: {type(exc).__name__}: {exc}"
    return None


def commit_message(message: str, trailers: Mapping[str, str]) -> str:
    """``message`` then, after a blank line, one ``Key: value`` line per trailer."""
    body = message.replace("\r\n", "\n").strip()
    if not body or "\0" in body:
        raise MlipilotError(
            f"a commit message must be non-empty text without NUL: {shown(message)}"
        )
    lines = []
    for key, value in trailers.items():
        text = str(value).strip()
        if not _TRAILER_KEY.fullmatch(key) or not text or "\n" in text or "\r" in text:
            raise MlipilotError(
                f"trailer {shown(key)}: {shown(value)}: the key takes letters, digits and '-', "
                "the value one non-empty line"
            )
        lines.append(f"{key}: {text}")
    return body + ("\n\n" + "\n".join(lines) if lines else "") + "\n"


def _editable_paths(editable: Sequence[str]) -> tuple[str, ...]:
    if isinstance(editable, str) or not editable:
        raise MlipilotError(f"editable must be a non-empty list of paths, not {shown(editable)}")
    for path in editable:
        parts = str(path).split("/")
        if posixpath.normpath(path) != path or path.startswith("/") or {"..", ".git"} & set(parts):
            raise MlipilotError(
                f"editable path {shown(path)}: write it relative to the program folder, "
                "normalized, without '..' or .git (e.g. training/program.py)"
            )
    return tuple(editable)


@dataclass(frozen=True)
class _Edit:
    base: str  # the commit the diff applies to
    tree: str  # the tree it makes
    paths: list[str]  # the editable files it changes


class ProgramRepo:
    """A campaign's training program under git: ``main`` plus a branch per reverted edit."""

    def __init__(self, root: Path, editable: Sequence[str]) -> None:
        self.root = Path(os.path.realpath(root))
        self.editable = _editable_paths(editable)

    @classmethod
    def create(
        cls,
        root: Path,
        template: Path,
        editable: Sequence[str],
        message: str = "Baseline training program",
    ) -> ProgramRepo:
        """Copy ``template`` into ``root`` (new or empty) and commit it as ``main``."""
        repo, root, template = cls(root, editable), Path(root), Path(template)
        if not template.is_dir():
            raise MlipilotError(f"{template}: no such template folder")
        for path in repo.editable:
            if (template / path).is_symlink() or not (template / path).is_file():
                raise MlipilotError(f"editable file {path} is not a regular file in {template}")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise MlipilotError(f"{root} exists and is not an empty folder")
        made = not root.exists()
        try:
            skip = shutil.ignore_patterns(".git", "__pycache__", "*.pyc")
            shutil.copytree(template, root, symlinks=True, ignore=skip, dirs_exist_ok=True)
            repo._git("init", "-q", "-b", "main", "--template=")
            repo._git("add", "-A")
            sha = repo._commit(repo._out("write-tree"), None, message, {})
            repo._git("update-ref", "-m", "mlipilot: baseline", MAIN, sha, "")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            if not made:
                root.mkdir()
            raise
        return repo

    @classmethod
    def open(cls, root: Path, editable: Sequence[str]) -> ProgramRepo:
        """The repository ``create`` made at ``root``; MlipilotError naming it if it is not."""
        repo = cls(root, editable)
        problem = repo._problem()
        if problem:
            raise MlipilotError(f"{root} is not a code-mode program repository: {problem}")
        return repo

    def _problem(self) -> str | None:
        if not (self.root / ".git").is_dir():
            return "it has no .git folder"
        top = self._run(["rev-parse", "--show-toplevel"])
        if top.returncode or os.path.realpath(top.stdout.decode().strip()) != str(self.root):
            return "it is not the top folder of a git work tree"
        if self._run(["symbolic-ref", "-q", "HEAD"]).stdout.decode().strip() != MAIN:
            return "HEAD is not branch main"
        if self._run(["rev-parse", "--verify", "-q", f"{MAIN}^{{commit}}"]).returncode:
            return "branch main has no commit"
        listing = self._git("ls-tree", "-r", "-z", MAIN, "--", *self.editable).decode()
        modes = {e.split("\t", 1)[1]: e.split(" ", 1)[0] for e in listing.split("\0") if e}
        missing = [path for path in self.editable if modes.get(path) not in REGULAR_MODES]
        return f"no regular file {', '.join(missing)} on main" if missing else None

    def head(self) -> str:
        """The full sha of ``main``."""
        return self._out("rev-parse", "--verify", "-q", f"{MAIN}^{{commit}}")

    def files(self) -> dict[str, str]:
        """Each editable path and its text on ``main``."""
        head = self.head()
        return {path: self._text(head, path) for path in self.editable}

    def check(self, diff: str) -> list[str]:
        """The editable files the diff changes; CodeEditError if it cannot be tried."""
        return self._prepare(diff).paths

    def materialize(self, diff: str | None, dest: Path, base: str | None = None) -> Path:
        """A plain copy (no .git) of ``base``'s files (default: ``main``) at ``dest``, with
        ``diff`` applied."""
        if base is not None and not _SHA.fullmatch(base):
            raise MlipilotError(f"base {shown(base)} is not a full commit sha")
        tree = (base or self.head()) if diff is None else self._prepare(diff, base).tree
        dest = Path(os.path.realpath(dest))
        if dest.is_relative_to(self.root):
            raise MlipilotError(f"{dest} is inside the program repository {self.root}")
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise MlipilotError(f"{dest} exists and is not an empty folder")
        dest.mkdir(parents=True, exist_ok=True)
        with self._scratch_index(tree) as env:
            self._git("checkout-index", "-a", "-f", f"--prefix={dest}/", env=env)
        return dest

    def accept(self, diff: str, message: str, trailers: Mapping[str, str]) -> str:
        """Commit ``diff`` on ``main`` (index and work tree follow); the new commit's sha."""
        edit = self._prepare(diff)
        sha = self._commit(edit.tree, edit.base, message, trailers)
        self._run(["update-index", "-q", "--refresh"])
        try:  # refuses, leaving everything as it was, when the work tree has changes of its own
            self._git("read-tree", "-m", "-u", edit.base, sha)
        except MlipilotError as exc:
            raise MlipilotError(
                f"the work tree differs from main; nothing accepted: {exc}"
            ) from None
        try:
            self._git("update-ref", "-m", "mlipilot: accept", MAIN, sha, edit.base)
        except MlipilotError:
            self._run(["read-tree", "-m", "-u", sha, edit.base])
            raise
        return sha

    def keep_reverted(
        self,
        diff: str,
        branch: str,
        message: str,
        trailers: Mapping[str, str],
        *,
        base: str | None = None,
    ) -> str:
        """Commit ``diff`` on a new ``branch`` off ``base`` (default: ``main``), touching neither
        ``main`` nor the index nor the work tree; the commit's sha."""
        ref = f"refs/heads/{branch}"
        if branch == "main" or self._run(["check-ref-format", ref]).returncode:
            raise MlipilotError(f"{shown(branch)} is not a valid new branch name")
        if base is not None and not _SHA.fullmatch(base):
            raise MlipilotError(f"base {shown(base)} is not a full commit sha")
        edit = self._prepare(diff, base)
        sha = self._commit(edit.tree, edit.base, message, trailers)
        self._git("update-ref", "-m", "mlipilot: keep reverted", ref, sha, "")
        return sha

    def candidates(self) -> set[str]:
        """The candidates whose edits are kept (committed on main or on a branch): the values
        of their ``Candidate`` trailers."""
        out = self._out("log", "--all", "--format=%(trailers:key=Candidate,valueonly)")
        return {line.strip() for line in out.splitlines() if line.strip()}

    def log(self, all_branches: bool = True) -> str:
        """The history as ``git log --graph --decorate --oneline`` draws it."""
        refs = ["--branches"] if all_branches else [MAIN]
        args = ["log", "--graph", "--oneline", "--decorate=short", "--no-color", *refs]
        return self._git(*args).decode(errors="replace")

    # ---- internals ----

    def _prepare(self, diff: str, base: str | None = None) -> _Edit:
        patches = _parse(diff, self.editable)
        base = (
            self.head()
            if base is None
            else self._out("rev-parse", "--verify", "-q", f"{base}^{{commit}}")
        )
        texts = {patch.path: self._text(base, patch.path) for patch in patches}
        for patch in patches:
            _place(patch, texts[patch.path])
        with self._scratch_index(base) as env:
            applied = self._run(
                ["apply", "--cached", "--whitespace=nowarn", "-"], _render(patches), env
            )
            if applied.returncode:
                err = applied.stderr.decode(errors="replace")
                raise CodeEditError(_not_applying(patches, texts, base, err))
            tree = self._out("write-tree", env=env)
        paths = self._changed(base, tree)
        for path in paths:
            if path.endswith(".py"):
                problem = _syntax_error(path, self._git("cat-file", "blob", f"{tree}:{path}"))
                if problem:
                    raise CodeEditError(problem)
        return _Edit(base, tree, paths)

    def _changed(self, base: str, tree: str) -> list[str]:
        """The paths ``tree`` changes from ``base``: editable regular files, in place only."""
        raw = self._git("diff-tree", "-r", "-z", "--no-renames", base, tree).decode(
            errors="replace"
        )
        fields = raw.split("\0")[:-1]  # each field ends with NUL
        paths = []
        for meta, path in zip(fields[0::2], fields[1::2], strict=True):
            old_mode, new_mode, _, _, status = meta.lstrip(":").split()
            if status != "M" or old_mode != new_mode or new_mode not in REGULAR_MODES:
                raise CodeEditError(
                    f"the diff changes the kind or mode of {path}; {_only(self.editable)}"
                )
            if path not in self.editable:
                raise CodeEditError(f"the diff changes {path}; {_only(self.editable)}")
            paths.append(path)
        if not paths:
            raise CodeEditError("the diff changes nothing: its '+' lines equal its '-' lines")
        return paths

    def _text(self, rev: str, path: str) -> str:
        data = self._git("cat-file", "blob", f"{rev}:{path}")
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise MlipilotError(f"{path} at {rev[:12]} is not UTF-8 text: {exc}") from None

    def _commit(
        self, tree: str, parent: str | None, message: str, trailers: Mapping[str, str]
    ) -> str:
        text = commit_message(message, trailers)
        parents = ["-p", parent] if parent else []
        return self._out(
            "commit-tree", "--no-gpg-sign", *parents, "-F", "-", tree, input=text.encode()
        )

    @contextmanager
    def _scratch_index(self, tree: str) -> Iterator[dict[str, str]]:
        """An environment whose git commands use a temporary index holding ``tree``."""
        with tempfile.TemporaryDirectory(prefix="mlipilot-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git("read-tree", tree, env=env)
            yield env

    def _environment(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        # Nothing of the caller's environment but PATH: no GIT_DIR, GIT_INDEX_FILE, ... leaks in.
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self.root),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_SYSTEM": os.devnull,
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CEILING_DIRECTORIES": str(self.root.parent),  # never an enclosing repository
            "GIT_TERMINAL_PROMPT": "0",
            **(extra or {}),
        }

    def _run(
        self, args: list[str], input: bytes | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        config = [arg for item in GIT_CONFIG for arg in ("-c", item)]
        cmd = ["git", "-C", str(self.root), *config, *args]
        try:
            return subprocess.run(
                cmd,
                input=input,
                capture_output=True,
                env=self._environment(env),
                timeout=GIT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MlipilotError(f"git {' '.join(args)} in {self.root}: {exc}") from None

    def _git(
        self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None
    ) -> bytes:
        done = self._run(list(args), input, env)
        if done.returncode:
            err = clipped(done.stderr.decode(errors="replace").strip(), MAX_STDERR_BYTES)
            raise MlipilotError(
                f"git {' '.join(args)} failed in {self.root} (exit {done.returncode}): {err}"
            )
        return done.stdout

    def _out(
        self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None
    ) -> str:
        return self._git(*args, input=input, env=env).decode(errors="replace").strip()


def _lines_keeping_ends(text: str) -> list[str]:
    """Lines split at ``\\n`` only (``str.splitlines`` also splits at form feeds and more)."""
    parts = text.split("\n")
    return [line + "\n" for line in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def unified_diff(path: str, before: str, after: str) -> str:
    """A git-style unified diff of ``path`` (``a/``, ``b/`` prefixes) that ``check`` accepts;
    empty when nothing changed."""
    if before == after:
        return ""
    lines = difflib.unified_diff(
        _lines_keeping_ends(before),
        _lines_keeping_ends(after),
        fromfile=f"a/{path}",
        tofile=f"b/{path}",
    )
    out = [f"diff --git a/{path} b/{path}\n"]
    for line in lines:
        out.append(line if line.endswith("\n") else f"{line}\n\\ No newline at end of file\n")
    return "".join(out)


def apply_to_files(files: Mapping[str, str], diff: str) -> dict[str, str]:
    """``files`` (path -> text) with ``diff`` applied, checked as ``ProgramRepo.check`` does;
    CodeEditError when it cannot be. For an agent's tool, which has the texts but no repo."""
    with tempfile.TemporaryDirectory(prefix="mlipilot-diff-") as tmp:
        template = Path(tmp) / "template"
        for path, text in files.items():
            (template / path).parent.mkdir(parents=True, exist_ok=True)
            (template / path).write_text(text)
        repo = ProgramRepo.create(Path(tmp) / "repo", template, list(files))
        repo.check(diff)
        after = repo.materialize(diff, Path(tmp) / "after")
        return {path: (after / path).read_text() for path in files}
