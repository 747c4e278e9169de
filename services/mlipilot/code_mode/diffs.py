"""Unified diffs as agents write them: parsed strictly, placed, checked, rendered again.

Diffs are LLM output, so untrusted. ``parse`` refuses, with a message an agent can act on,
anything but hunks that change existing editable files in place: new, deleted, renamed,
copied or binary files, mode changes, paths outside the folder or not editable. Hunk line
counts are recounted from the hunk body, and each hunk is moved to the nearest place its
unchanged and removed lines occur (LLMs often get both wrong); only the hunks parsed here,
rendered again, reach ``git apply`` (code_mode/repo.py).
"""

from __future__ import annotations

import difflib
import posixpath
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mlipilot.errors import MlipilotError, clipped, shown
from mlipilot.process_globals import GLOBALS_LOCK

MAX_DIFF_BYTES = 1 << 20
MAX_STDERR_BYTES = 4000  # of git's stderr quoted in a message
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


def only_editable(editable: Sequence[str]) -> str:
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
            f"line {n} of the diff names /dev/null: it {what} a file; " + only_editable(editable)
        )
    return _safe_path(name.removeprefix(prefix), n)


def _file_path(old: str, new: str, n: int, editable: Sequence[str]) -> str:
    if old != new:
        raise CodeEditError(
            f"line {n} of the diff renames {old} to {new}; {only_editable(editable)}"
        )
    if old not in editable:
        raise CodeEditError(
            f"line {n} of the diff: {old} is not editable; {only_editable(editable)}"
        )
    return old


def _other_line(text: str, n: int, started: bool, editable: Sequence[str]) -> None:
    """A line outside hunks and file headers: fine before the diff starts, else an error."""
    for prefix, what in _REFUSED:
        if text.startswith(prefix):
            raise CodeEditError(
                f"line {n} of the diff ({shown(text)}) {what}; {only_editable(editable)}"
            )
    if started and text.strip() and not text.startswith(("index ", "diff ")):
        raise CodeEditError(
            f"line {n} of the diff is neither in a hunk nor a file header: {shown(text)}; "
            + _HUNK_FORMAT
        )


def parse_diff(diff: str, editable: Sequence[str]) -> list[_FilePatch]:
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
            f"{only_editable(editable)}, e.g.\n--- a/{editable[0]}\n+++ b/{editable[0]}\n"
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


def place_hunks(patch: _FilePatch, text: str) -> None:
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


def render_diff(patches: list[_FilePatch]) -> bytes:
    out: list[str] = []
    for patch in patches:
        path = patch.path
        out += [f"diff --git a/{path} b/{path}", f"--- a/{path}", f"+++ b/{path}"]
        for hunk in patch.hunks:
            old, new = hunk.counts()
            out.append(f"@@ -{hunk.old_start},{old} +{hunk.new_start},{new} @@")
            out += [text or " " for _, text in hunk.body]
    return ("\n".join(out) + "\n").encode()


def not_applying(patches: list[_FilePatch], texts: Mapping[str, str], base: str, err: str) -> str:
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


def syntax_error(path: str, source: bytes) -> str | None:
    """``training/program.py, line N: <message>`` when the file does not compile."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings: not errors, and not ours to print
            with GLOBALS_LOCK:
                compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        text = (exc.text or "").strip()
        return f"{path}, line {exc.lineno}: {exc.msg}" + (f"\n    {text}" if text else "")
    except (ValueError, RecursionError, MemoryError) as exc:
        return f"{path}: {type(exc).__name__}: {exc}"
    return None


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
