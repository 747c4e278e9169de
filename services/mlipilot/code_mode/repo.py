"""The code-mode program repository: a campaign's training program under git.

In code mode an agent edits the training program (``training/program.py``) by proposing a
unified diff. The program lives in a git repository in the campaign's run folder, whose
``git log`` reads as the campaign's research history:

- ``main`` holds the baseline and every accepted edit, one commit each. The message is the
  hypothesis; ``Key: value`` trailers link it to the ledger (``Ledger-Row: 42``);
- a reverted edit is committed on a branch of its own off the commit it was tried on. It is
  kept there without touching ``main``, the index or the work tree.

Diffs are LLM output, so untrusted. ``check`` parses a diff (code_mode/diffs.py), refusing
with a message an agent can act on anything but hunks that change existing editable files in
place. Only the hunks it parsed, rendered again, reach ``git apply``, which applies them to a
scratch index (never to a file); the changed ``.py`` files must then compile. Git runs with a
clean environment and no user or system configuration, so the hooks, signing setup or
``GIT_DIR`` of whoever runs the campaign never change what happens.

Nor is the repository's own ``.git/config`` trusted: git can run programs it names
(``core.fsmonitor``, filter and diff drivers, ``core.sshCommand``, ...) or read other files
(``include.path``). Before git runs in the repository, its config is read as data and refused
(MlipilotError naming the key) if it holds any key beyond what ``git init`` writes.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlipilot.code_mode.diffs import (
    CodeEditError,
    not_applying,
    only_editable,
    parse_diff,
    place_hunks,
    render_diff,
    syntax_error,
)
from mlipilot.errors import MlipilotError, clipped, shown

MAIN = "refs/heads/main"
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
    "core.fsmonitor=false",
    "core.autocrlf=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "init.defaultBranch=main",
)
# The keys a repository's own .git/config may hold: what `git init -q -b main --template=`
# writes (git 2.39 on Linux: the first four; macOS and Windows add ignorecase,
# precomposeunicode and symlinks; a SHA-256 repository extensions.objectformat). None of them
# names a program to run or another file to read, and none turns on config.worktree.
#
# Attributes (.gitattributes, .git/info/attributes) need no check: they can only name a
# filter, diff or merge driver, and a driver's command comes from config alone. System and
# global config are off, core.attributesFile is /dev/null, the repository's config holds only
# these keys, so a named driver has no command and git runs nothing for it. Hooks never run:
# core.hooksPath=/dev/null on every command line beats any config.
REPO_CONFIG_KEYS = frozenset(
    {
        "core.repositoryformatversion",
        "core.filemode",
        "core.bare",
        "core.logallrefupdates",
        "core.ignorecase",
        "core.precomposeunicode",
        "core.symlinks",
        "extensions.objectformat",
    }
)
_TRAILER_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


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
        self._config_checked: tuple[int, ...] | None = None  # stat of the config last checked

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
        _check_base(base)
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

    def accept(
        self,
        diff: str,
        message: str,
        trailers: Mapping[str, str],
        *,
        base: str | None = None,
    ) -> str:
        """Commit ``diff`` on ``main`` (index and work tree follow); the new commit's sha.

        ``base``: the commit the candidate was tried on, when ``main`` may have moved on since
        (asynchronous campaigns). The commit, a child of ``main``, holds ``base``'s files with
        ``diff`` applied: the program that trained and won, as a recipe made from an older
        incumbent replaces the newer one. Edits accepted on ``main`` since ``base`` leave it
        (they stay in its history)."""
        _check_base(base)
        head = self.head()
        edit = self._prepare(diff, base)
        sha = self._commit(edit.tree, head, message, trailers)
        self._run(["update-index", "-q", "--refresh"])
        try:  # refuses, leaving everything as it was, when the work tree has changes of its own
            self._git("read-tree", "-m", "-u", head, sha)
        except MlipilotError as exc:
            raise MlipilotError(
                f"the work tree differs from main; nothing accepted: {exc}"
            ) from None
        try:
            self._git("update-ref", "-m", "mlipilot: accept", MAIN, sha, head)
        except MlipilotError:
            self._run(["read-tree", "-m", "-u", sha, head])
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
        _check_base(base)
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
        patches = parse_diff(diff, self.editable)
        base = (
            self.head()
            if base is None
            else self._out("rev-parse", "--verify", "-q", f"{base}^{{commit}}")
        )
        texts = {patch.path: self._text(base, patch.path) for patch in patches}
        for patch in patches:
            place_hunks(patch, texts[patch.path])
        with self._scratch_index(base) as env:
            applied = self._run(
                ["apply", "--cached", "--whitespace=nowarn", "-"], render_diff(patches), env
            )
            if applied.returncode:
                err = applied.stderr.decode(errors="replace")
                raise CodeEditError(not_applying(patches, texts, base, err))
            tree = self._out("write-tree", env=env)
        paths = self._changed(base, tree)
        for path in paths:
            if path.endswith(".py"):
                problem = syntax_error(path, self._git("cat-file", "blob", f"{tree}:{path}"))
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
                    f"the diff changes the kind or mode of {path}; {only_editable(self.editable)}"
                )
            if path not in self.editable:
                raise CodeEditError(f"the diff changes {path}; {only_editable(self.editable)}")
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

    def _check_own_config(self) -> None:
        """Refuse (MlipilotError) a repository whose own configuration git should not trust:
        a .git that is not a plain folder, a commondir (git would read another folder's
        config), or a .git/config with a key outside REPO_CONFIG_KEYS. Checked again only when
        the config file changes (its stat), so it costs a few stat calls per git command."""
        git_dir = self.root / ".git"
        try:
            info = os.lstat(git_dir)
        except FileNotFoundError:
            return  # before `git init` (create): no configuration of its own yet
        if not stat.S_ISDIR(info.st_mode):
            raise MlipilotError(
                f"{self.root}: .git is not a plain folder (a symlink or a gitdir file): git would "
                "use another repository's configuration; use the repository mlipilot created"
            )
        if os.path.lexists(git_dir / "commondir"):
            raise MlipilotError(
                f"{self.root}: .git/commondir makes git read another folder's configuration; "
                "mlipilot's program repositories have none: remove it"
            )
        config = git_dir / "config"
        try:
            found = os.lstat(config)
        except FileNotFoundError:
            return  # git reads no configuration of the repository's then
        key = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)
        if key == self._config_checked:
            return
        if not stat.S_ISREG(found.st_mode):
            raise MlipilotError(f"{config}: not a regular file (a symlink?): git would follow it")
        # Parsed by git itself, as data: a file named on the command line, includes off, and
        # GIT_DIR pointing at no repository, so no repository's configuration is read.
        try:
            done = subprocess.run(
                ["git", "config", "--file", str(config), "--no-includes", "--list", "-z"],
                capture_output=True,
                env={**self._environment(None), "GIT_DIR": os.devnull},
                cwd="/",
                timeout=GIT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MlipilotError(f"git config --file {config}: {exc}") from None
        if done.returncode:
            err = clipped(done.stderr.decode(errors="replace").strip(), MAX_STDERR_BYTES)
            raise MlipilotError(f"{config}: git cannot read it ({err}); fix or remove it")
        keys = [
            entry.split("\n", 1)[0] for entry in done.stdout.decode(errors="replace").split("\0")
        ]
        refused = sorted({k for k in keys if k} - REPO_CONFIG_KEYS)
        if refused:
            raise MlipilotError(
                f"{self.root}: its .git/config sets {', '.join(refused)}; mlipilot runs git only "
                "in a repository whose own configuration holds what `git init` writes "
                f"({', '.join(sorted(REPO_CONFIG_KEYS))}), because git runs programs and reads "
                "files that configuration names (core.fsmonitor, filter drivers, include.path, "
                "...): remove those keys from .git/config"
            )
        self._config_checked = key

    def _run(
        self, args: list[str], input: bytes | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        self._check_own_config()
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


def _check_base(base: str | None) -> None:
    """A base commit named by a caller (a ledger row, a candidate job) must be a full sha:
    a ref or a revision expression would let it name whatever main or a branch holds now."""
    if base is not None and not _SHA.fullmatch(base):
        raise MlipilotError(f"base {shown(base)} is not a full commit sha")


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
