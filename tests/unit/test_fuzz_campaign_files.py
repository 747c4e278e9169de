"""Fuzzed campaign files: every bad one is refused with a message that names the file.

A campaign file is the first thing a user writes and the document a client sends to the
orchestrator, so it gets arbitrary bytes (invalid UTF-8, deep nesting, YAML aliases), arbitrary
text, and mappings built from the real schema with keys dropped, values replaced by wrong types
or out-of-range numbers, and unknown keys added. ``load_campaign``/``parse_campaign`` must
either return a campaign that re-validates, or raise ``MlipilotError`` naming the file (and,
for a mapping that fails validation, the offending keys in ``fields``); nothing else escapes.
The CLI must turn the same errors into exit code 2 and one ``error:`` line, no traceback.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mlipilot.config import Campaign, load_campaign, parse_campaign
from mlipilot.errors import MlipilotError
from mlipilot.recipe import Recipe
from mlipilot.yaml_files import safe_load

VALID: dict[str, Any] = {
    "name": "cu-small",
    "description": "fuzzed",
    "data": {"kind": "cu-emt", "path": "data/cu", "seed": 3, "n_train": 16, "n_test": 8},
    "scorecard": "specs/tiny.yaml",
    "baseline": {"num_channels": 8, "r_max": 4.5, "loss": "huber"},
    "agent": {"kind": "random", "seed": 1},
    "budget": {
        "iterations": 2,
        "epochs": 3,
        "max_train_seconds": 60,
        "agent_retries": 1,
        "candidates_per_iteration": 1,
    },
    "compute": {
        "device": "cpu",
        "torch_threads": 1,
        "ray_address": "local",
        "trainer": {"num_cpus": 1, "num_gpus": 0},
        "md": {"num_cpus": 0.5, "num_gpus": 0},
    },
    "min_improvement": 0.01,
    "noise": {"seeds": 3, "k": 1.5},
}

# Scalars that sit on or just past the schema's bounds, or are of a type YAML makes easily.
EDGE_SCALARS = st.sampled_from(
    [
        *(0, -1, 1, 2, 4, 64, 65, 1000, 1001, 100_000, 100_001, 2**31, 2**64, -(2**63)),
        *(0.0, -0.0, 0.5, 0.99, 1.0, 1e-6, 1e308, math.inf, -math.inf, math.nan),
        *("", " ", "cpu", "cuda", "gpu", "rule-based", "oracle", "local", "auto", "ray://h:1"),
        *("host:10001", "ray://", "a b", "../x", "-name", "null", "1e3", "yes", True, False, None),
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.dates()
    | EDGE_SCALARS
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
UNKNOWN_KEYS = st.text(min_size=1, max_size=12).filter(lambda k: k not in VALID) | st.integers()

# Every recipe key with a plausible value, so baselines are mutated over the whole schema.
RECIPE_KEYS = sorted(Recipe.model_fields)


@st.composite
def mutated(draw: st.DrawFn, tree: dict[Any, Any], depth: int = 0) -> dict[Any, Any]:
    """``tree`` with some keys dropped, some values replaced by junk, some keys added."""
    out: dict[Any, Any] = {}
    for key, value in tree.items():
        action = draw(st.sampled_from(["keep", "keep", "keep", "junk", "edge", "drop", "deeper"]))
        if action == "drop":
            continue
        if action == "junk":
            out[key] = draw(JUNK)
        elif action == "edge":
            out[key] = draw(EDGE_SCALARS)
        elif action == "deeper" and isinstance(value, dict):
            out[key] = draw(mutated(value, depth + 1))
        else:
            out[key] = copy.deepcopy(value)
    if depth == 0 and draw(st.booleans()):  # the baseline may touch any recipe key
        baseline = out.get("baseline")
        if isinstance(baseline, dict):
            for key in draw(st.lists(st.sampled_from(RECIPE_KEYS), max_size=3)):
                baseline[key] = draw(EDGE_SCALARS | JUNK)
    for key in draw(st.lists(UNKNOWN_KEYS, max_size=2)):
        out[key] = draw(JUNK)
    return out


@st.composite
def bad_documents(draw: st.DrawFn) -> tuple[dict[Any, Any], str]:
    """A mutated campaign that always has an unknown top-level key, so it never validates."""
    doc = draw(mutated(VALID))
    unknown = draw(st.from_regex(r"\Azz_[a-z0-9_]{1,10}\Z"))
    doc[unknown] = draw(JUNK)
    return doc, unknown


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the scorecard file the valid campaign names (parse_campaign checks it)."""
    root = tmp_path_factory.mktemp("campaigns")
    (root / "specs").mkdir()
    (root / "specs" / "tiny.yaml").write_text("name: tiny\n")
    return root


_names = itertools.count()


def _check_loaded(campaign: Campaign) -> None:
    again = Campaign.model_validate(campaign.model_dump())
    assert again == campaign
    assert again.scorecard.is_absolute() and again.data.path.is_absolute()


def _check_refused(exc: MlipilotError, name: str) -> str:
    msg = str(exc)
    assert isinstance(exc, ValueError)
    assert name in msg, f"the message does not name the file {name!r}:\n{msg}"
    assert "Traceback" not in msg
    return msg


def _is_mapping(text: str | bytes) -> bool:
    """A mapping as campaign files are read: YAML without aliases (yaml_files.py)."""
    try:
        return isinstance(safe_load(text), dict)
    except (yaml.YAMLError, RecursionError):
        return False


def _parse(text: str, source_name: str, base_dir: Path) -> Campaign | MlipilotError:
    try:
        campaign, digest = parse_campaign(text, source_name, base_dir)
    except MlipilotError as exc:
        return exc
    assert len(digest) == 64
    return campaign


@settings(max_examples=1000)
@given(doc=mutated(VALID), source_name=st.text(max_size=20))
@example(doc=VALID, source_name="ok.yaml")
def test_parse_campaign_mutated_mappings(
    doc: dict[Any, Any], source_name: str, base_dir: Path
) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    result = _parse(text, source_name, base_dir)
    if isinstance(result, Campaign):
        event("loaded")
        _check_loaded(result)
        return
    event("refused")
    msg = _check_refused(result, source_name or "(unnamed)")
    # A mapping that fails validation says which keys: each one is in the message too.
    assert result.fields, f"no offending keys for a mapping that failed:\n{msg}"
    for field in result.fields:
        assert field in msg, (field, msg)
    for key in yaml.safe_load(text):  # as read back: YAML may fold odd characters in keys
        if isinstance(key, str) and key not in VALID:  # an unknown key is named as such
            assert f": {key}: unknown key" in msg, (key, msg)
        elif not isinstance(key, str):  # YAML allows int keys; pydantic names them too
            assert f": {key}: Keys should be strings" in msg, (key, msg)


_YAMLISH = st.sampled_from(
    [
        *(":", "- ", "? ", "&a ", "*a", "!!python/object:os.system ", "{", "}", "[", "]", "\n"),
        *("name: x\n", "data:\n  path: d\n", "baseline: ", "'", '"', "#", "%YAML 1.1\n", "---\n"),
    ]
)


@settings(max_examples=1000)
@given(
    text=st.text(max_size=200) | st.lists(_YAMLISH | st.text(max_size=5), max_size=30).map("".join),
    source_name=st.text(max_size=20),
)
@example(text="[" * 5000 + "]" * 5000, source_name="deep.yaml")
@example(text="a: " + "{b: " * 3000 + "1" + "}" * 3000, source_name="deep-map.yaml")
@example(
    text="\n".join(
        ["l0: &l0 [x, x]"] + [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, 22)]
    ),
    source_name="billion-laughs.yaml",
)
@example(text="name: x\nbaseline: {lr: &a [*a]}\n", source_name="alias.yaml")
def test_parse_campaign_arbitrary_text(text: str, source_name: str, base_dir: Path) -> None:
    result = _parse(text, source_name, base_dir)
    if isinstance(result, Campaign):
        _check_loaded(result)
        return
    msg = _check_refused(result, source_name or "(unnamed)")
    assert len(msg) < 50_000, "the message grows with the input (aliases expanded?)"
    if _is_mapping(text):
        assert result.fields, msg


@settings(max_examples=300)
@given(
    raw=st.binary(max_size=300)
    | st.builds(
        lambda doc, cut, junk: yaml.safe_dump(doc).encode()[:cut] + junk,
        mutated(VALID),
        st.integers(0, 400),
        st.binary(max_size=4),
    )
)
@example(raw=b"name: \xff\xfe bad utf-8\n")
@example(raw=b"\xef\xbb\xbfname: bom\n")
@example(raw=b"\x00\x00\x00")
def test_load_campaign_arbitrary_bytes(raw: bytes, base_dir: Path) -> None:
    path = base_dir / f"fuzzed-{next(_names)}.yaml"
    path.write_bytes(raw)
    try:
        campaign, digest = load_campaign(path)
    except MlipilotError as exc:
        msg = _check_refused(exc, str(path))
        if _is_mapping(raw):
            assert exc.fields, msg
        return
    finally:
        path.unlink()
    _check_loaded(campaign)
    assert len(digest) == 64


def test_load_campaign_missing_file_and_folder(base_dir: Path) -> None:
    for path in (base_dir / "absent.yaml", base_dir / "specs"):
        with pytest.raises(MlipilotError) as info:
            load_campaign(path)
        _check_refused(info.value, str(path))


@settings(max_examples=200)
@given(
    doc=st.just(VALID) | mutated(VALID),
    base=st.text(max_size=30)
    | st.sampled_from(["a\x00b", "/" + "b" * 300, "/" + "c/" * 3000, "/proc/self/fd/0"]),
)
def test_parse_campaign_bad_base_dir(doc: dict[Any, Any], base: str) -> None:
    """The base folder also comes over the wire: a NUL byte or a huge name is a clear error
    naming a field, never a crash; any other folder resolves the campaign's paths."""
    try:
        campaign, _ = parse_campaign(yaml.safe_dump(doc), "f.yaml", Path(base))
    except MlipilotError as exc:
        msg = _check_refused(exc, "f.yaml")
        assert exc.fields, msg
        if "\x00" in base and doc == VALID:  # a valid document: the folder is the fault
            assert exc.fields == ("base_dir",), msg
    else:
        _check_loaded(campaign)


_runner = CliRunner()


def _unwrapped(text: str) -> str:
    """``text`` without whitespace: Rich wraps long lines at spaces, or inside long words."""
    return "".join(text.split())


# Square brackets are Rich markup: a message quoting "[/]" must print, not crash the CLI.
MARKUP = {"zz_markup": "[/]", "name": "[bold red]x[/]"}


@settings(max_examples=25)
@given(bad=bad_documents())
@example(bad=(MARKUP, "zz_markup"))
def test_cli_run_refuses_bad_files_with_exit_2(
    bad: tuple[dict[Any, Any], str], base_dir: Path
) -> None:
    doc, unknown = bad
    path = base_dir / f"cli-{next(_names)}.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = base_dir / f"out-{path.stem}"
    result = _runner.invoke(app_under_test(), ["run", str(path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.startswith("error:"), result.output
    assert "Traceback" not in result.output
    flat = _unwrapped(result.output)
    assert path.name in flat and _unwrapped(f"{unknown}: unknown key") in flat, result.output
    if doc is MARKUP:
        assert "(got'[/]')" in flat and "'[boldred]x[/]'" in flat, result.output
    assert not out.exists(), "a refused campaign must not create its run folder"


@settings(max_examples=10)
@given(raw=st.binary(max_size=100).filter(lambda b: not _is_mapping(b)))
def test_cli_run_refuses_non_mapping_files(raw: bytes, base_dir: Path) -> None:
    path = base_dir / f"cli-{next(_names)}.yaml"
    path.write_bytes(raw)
    result = _runner.invoke(app_under_test(), ["run", str(path), "--out", str(base_dir / "o")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and "Traceback" not in result.output
    assert path.name in _unwrapped(result.output)


def app_under_test():  # imported lazily: the CLI pulls in the campaign loop's imports
    from mlipilot.cli import app

    return app


def test_a_valid_campaign_loads(base_dir: Path) -> None:
    """The mutation base itself is valid: otherwise the mapping property proves little."""
    campaign, _ = parse_campaign(yaml.safe_dump(VALID), "ok.yaml", base_dir)
    _check_loaded(campaign)
