"""Fuzzed gRPC requests: a proper status for every bad one, and the servers keep serving.

Real orchestrator and scorecard servers on loopback (see service_stack.py) get requests a
buggy or hostile client could send: campaign documents that are not YAML, not mappings, or
mappings with wrong values and unknown keys, with odd source names and base folders; campaign
ids that are path-traversal-like, very long or non-ASCII; scorecard names, hashes and URIs
(unknown schemes, fsspec chains, archives over junk files, places outside the service's
roots). Every reply must be a status the client can act on (INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION or PERMISSION_DENIED; never UNKNOWN, INTERNAL, or RESOURCE_EXHAUSTED from an
oversized error message), and after each request both servers still answer, and no run folder
was created.

Nothing here can start training: every campaign document sent has an unknown top-level key or
names a scorecard file that does not exist, and every test set sent is junk.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from factories import BAD_BASELINE
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from service_stack import ServiceStack, field_violations

from mlipilot.errors import shown
from mlipilot.v1 import orchestrator_pb2, orchestrator_pb2_grpc, scorecard_pb2

ACTIONABLE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
}
BAD_URI = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED}
SERVING = health_pb2.HealthCheckResponse.SERVING
KNOWN_SCORECARD = "cu-emt-tiny"


CAMPAIGN: dict[str, Any] = {
    "name": "fuzzed",
    "data": {"kind": "cu-emt", "path": "data", "seed": 0, "n_train": 16, "n_test": 8},
    "scorecard": "specs/cu-emt-tiny.yaml",
    "baseline": BAD_BASELINE,
    "agent": {"kind": "rule-based"},
    "budget": {"iterations": 2, "epochs": 3, "max_train_seconds": 300},
    "compute": {"torch_threads": 1},
}
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
TEXT = st.text(max_size=60) | st.text(min_size=300, max_size=3000)


@st.composite
def invalid_campaign_docs(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """The tiny campaign with values replaced or dropped, plus an unknown top-level key."""
    doc = copy.deepcopy(CAMPAIGN)
    for key in draw(st.lists(st.sampled_from(sorted(CAMPAIGN)), max_size=4, unique=True)):
        if draw(st.booleans()):
            del doc[key]
        else:
            doc[key] = draw(JUNK)
    section = doc.get(draw(st.sampled_from(["data", "budget", "baseline", "agent", "compute"])))
    if isinstance(section, dict):  # one wrong or unknown value one level down
        section[draw(st.text(max_size=20))] = draw(JUNK)
    unknown = draw(st.from_regex(r"\Azz_[a-z0-9_]{1,12}\Z"))
    doc[unknown] = draw(JUNK)
    return doc, unknown


YAMLISH = st.lists(
    st.sampled_from([":", "- ", "? ", "&a ", "*a", "!!binary ", "{", "}", "[", "]", "\n", "'"])
    | st.sampled_from(["name: x\n", "scorecard: specs/cu-emt-tiny.yaml\n", "%TAG ! x\n", "---\n"])
    | st.text(max_size=5),
    max_size=40,
).map("".join)
LAUGHS = "\n".join(
    ["l0: &l0 [x, x]"] + [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, 22)]
)
IDS = (
    st.text(max_size=40)
    | st.text(min_size=200, max_size=5000)
    | st.text(alphabet="./\\-_~%aA0\x00", max_size=30)
    | st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{250,400}\Z")  # a valid id, too long for a folder
    | st.sampled_from(["", ".", "..", "../runs", "../../etc/passwd", "/etc/passwd", "a" * 300])
    | st.sampled_from(["run\n", "ledger.sqlite", "~", "%2e%2e", "C:\\x", "\u202etxt", "é" * 200])
)


@pytest.fixture(scope="module")
def orchestrator(stack: ServiceStack) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
    return orchestrator_pb2_grpc.OrchestratorServiceStub(stack.channel(stack.orchestrator))


@pytest.fixture(scope="module")
def runs_before(stack: ServiceStack) -> list[Path]:
    return sorted(stack.runs.iterdir())


def _still_fine(stack: ServiceStack, runs_before: list[Path]) -> None:
    """Both servers answer health checks and a real call; no run folder appeared."""
    for server in (stack.orchestrator, stack.scorecard):
        health = health_pb2_grpc.HealthStub(stack.channel(server, token=None))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
    listed = orchestrator_pb2_grpc.OrchestratorServiceStub(stack.channel(stack.orchestrator))
    assert not listed.ListCampaigns(orchestrator_pb2.ListCampaignsRequest(), timeout=5).campaigns
    assert stack.scorecard_stub().ListScorecards(scorecard_pb2.ListScorecardsRequest(), timeout=5)
    assert sorted(stack.runs.iterdir()) == runs_before, "a bad request created a run folder"


def _refused(call, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        reply = call(*args, **kwargs)
        if not hasattr(reply, "SerializeToString"):  # a server stream: read it to the end
            list(reply)
    exc = info.value
    assert exc.code() in ACTIONABLE, (exc.code(), exc.details())
    return exc


def _create(
    orchestrator, text: str, source_name: str, base_dir: str
) -> tuple[grpc.RpcError, list[str]]:
    request = orchestrator_pb2.CreateCampaignRequest(
        campaign_yaml=text, source_name=source_name, base_dir=base_dir
    )
    exc = _refused(orchestrator.CreateCampaign, request, timeout=10)
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    where = f"campaign file {source_name or '(unnamed)'}"
    assert exc.details().startswith(where[:100]), (where[:100], exc.details()[:200])
    fields = field_violations(exc)
    event(f"first field: {fields[0][:20] if fields else None}")
    assert fields and len(fields) <= 8
    assert all(len(f.encode()) <= 80 for f in fields)
    return exc, fields


@settings(max_examples=100)
@given(bad=invalid_campaign_docs(), source_name=TEXT, base_dir=TEXT)
@example(
    bad=({**{f"zz_{i}": "y" * 300 for i in range(60)}, **CAMPAIGN}, "zz_0"),
    source_name="many-fields.yaml",
    base_dir="",
)
@example(bad=({"zz_x": "[/]"}, "zz_x"), source_name="n" * 100_000, base_dir="")
def test_create_campaign_with_an_invalid_mapping(
    stack: ServiceStack,
    orchestrator,
    runs_before: list[Path],
    bad: tuple[dict[str, Any], str],
    source_name: str,
    base_dir: str,
) -> None:
    doc, unknown = bad
    exc, fields = _create(orchestrator, yaml.safe_dump(doc), source_name, base_dir)
    if "more bytes)" not in exc.details():  # not cut short: it names the unknown key
        assert f"{unknown}: unknown key" in exc.details()
        assert unknown in fields or len(fields) == 8
    _still_fine(stack, runs_before)


@settings(max_examples=100)
@given(text=st.text(max_size=300) | YAMLISH, source_name=TEXT)
@example(text="[" * 5000 + "]" * 5000, source_name="deep.yaml")
@example(text=LAUGHS, source_name="billion-laughs.yaml")
@example(text="", source_name="")
def test_create_campaign_with_arbitrary_text(
    stack: ServiceStack, orchestrator, runs_before: list[Path], text: str, source_name: str
) -> None:
    _create(orchestrator, text, source_name, str(stack.root))
    _still_fine(stack, runs_before)


@settings(max_examples=100)
@given(
    base_dir=TEXT | st.sampled_from(["a\x00b", "/" + "b" * 300, "/" + "c/" * 3000, "/proc"]),
    source_name=TEXT,
)
def test_create_campaign_whose_scorecard_is_absent_under_any_base_dir(
    stack: ServiceStack, orchestrator, runs_before: list[Path], base_dir: str, source_name: str
) -> None:
    """A valid document but for its scorecard, which the server does not serve."""
    doc = {**CAMPAIGN, "scorecard": f"folder/no-such-scorecard-{uuid.uuid4().hex}.yaml"}
    _, fields = _create(orchestrator, yaml.safe_dump(doc), source_name, base_dir)
    assert fields == ["scorecard"]
    _still_fine(stack, runs_before)


@settings(max_examples=100)
@given(campaign_id=IDS, after=st.integers(-(2**63), 2**63 - 1))
@example(campaign_id="a" * 300, after=0)  # was UNKNOWN: "File name too long" escaped
def test_unknown_campaign_ids_are_not_found(
    stack: ServiceStack, orchestrator, runs_before: list[Path], campaign_id: str, after: int
) -> None:
    calls = [
        (orchestrator.GetCampaign, orchestrator_pb2.GetCampaignRequest(id=campaign_id)),
        (orchestrator.CancelCampaign, orchestrator_pb2.CancelCampaignRequest(id=campaign_id)),
        (
            orchestrator.WatchCampaign,
            orchestrator_pb2.WatchCampaignRequest(id=campaign_id, after_sequence=after),
        ),
        (
            orchestrator.FetchArtifact,
            orchestrator_pb2.FetchArtifactRequest(
                id=campaign_id, artifact=orchestrator_pb2.ARTIFACT_LEDGER
            ),
        ),
    ]
    for call, request in calls:
        exc = _refused(call, request, timeout=5)
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
        assert exc.details().startswith("campaign ") and "no such campaign" in exc.details()
    _still_fine(stack, runs_before)


# --- the scorecard service ------------------------------------------------------------------


@pytest.fixture(scope="module")
def junk(stack: ServiceStack) -> dict[str, str]:
    """Files a request may point at, where the service may read: nothing in them is a model
    or a test set."""
    folder = stack.root / "data" / "junk"
    folder.mkdir(parents=True)
    model = folder / "junk.model"
    model.write_bytes(b"\x00not a model\xff" * 10)
    test_set = folder / "junk.xyz"
    test_set.write_bytes(b"2\nnot an extended xyz header\nCu 0 0\n")
    return {
        "model": str(model),
        "model_uri": model.as_uri(),
        "test_set": str(test_set),
        "test_set_uri": test_set.as_uri(),
        "test_set_sha256": hashlib.sha256(test_set.read_bytes()).hexdigest(),
        "folder": str(folder),
    }


URI_FIELDS = ("model_uri", "baseline_model_uri", "test_set_uri", "test_set_sha256", "artifacts_uri")
SCHEMES = ["file", "local", "memory", "zip", "tar", "reference", "simplecache", "filecache"]
SCHEMES += ["blockcache", "data", "nosuch", "s3", "gzip"]


def uris(junk: dict[str, str]) -> st.SearchStrategy[str]:
    known = [junk["model"], junk["model_uri"], junk["test_set"], junk["test_set_uri"]]
    known += [junk["folder"], f"zip://x::{junk['model_uri']}", f"tar://x::{junk['model_uri']}"]
    known += [f"simplecache::{junk['model_uri']}", "reference://x", "", "/", "..", "\x00"]
    return (
        st.text(max_size=80)
        | st.text(min_size=500, max_size=3000)
        | st.builds("{}://{}".format, st.sampled_from(SCHEMES), st.text(max_size=40))
        | st.builds("{}::{}".format, st.sampled_from(SCHEMES), st.sampled_from(known))
        | st.sampled_from(known)
    )


@pytest.fixture(scope="module")
def scorecard_sha(stack: ServiceStack) -> str:
    request = scorecard_pb2.GetScorecardRequest(name=KNOWN_SCORECARD)
    return stack.scorecard_stub().GetScorecard(request, timeout=5).sha256


@settings(max_examples=100)
@given(data=st.data())
def test_evaluate_with_random_fields(
    stack: ServiceStack,
    runs_before: list[Path],
    junk: dict[str, str],
    scorecard_sha: str,
    data: st.DataObject,
) -> None:
    uri = uris(junk)
    request = scorecard_pb2.EvaluateRequest(
        scorecard=data.draw(st.just(KNOWN_SCORECARD) | TEXT, "scorecard"),
        scorecard_sha256=data.draw(
            st.sampled_from(["", "", scorecard_sha, scorecard_sha]) | TEXT, "sha"
        ),
        model_uri=data.draw(uri | st.just(junk["model_uri"]), "model_uri"),
        baseline_model_uri=data.draw(st.just("") | uri, "baseline_model_uri"),
        test_set_uri=data.draw(uri | st.just(junk["test_set_uri"]), "test_set_uri"),
        test_set_sha256=data.draw(
            st.sampled_from([junk["test_set_sha256"]] * 3) | TEXT, "test_set_sha256"
        ),
        artifacts_uri=data.draw(st.just("") | uri, "artifacts_uri"),
        candidate=data.draw(TEXT, "candidate"),
    )
    exc = _refused(stack.scorecard_stub().Evaluate, request, timeout=20)
    if request.scorecard != KNOWN_SCORECARD:
        expected = grpc.StatusCode.NOT_FOUND
    elif request.scorecard_sha256 not in ("", scorecard_sha):
        expected = grpc.StatusCode.FAILED_PRECONDITION
    else:
        expected = grpc.StatusCode.INVALID_ARGUMENT
    if expected == grpc.StatusCode.INVALID_ARGUMENT:
        assert exc.code() in BAD_URI, exc.details()
    else:
        assert exc.code() == expected, exc.details()
    field = exc.details().split(":")[0] if exc.code() in BAD_URI else ""
    event(f"{exc.code().name} {field}")
    if exc.code() in BAD_URI:  # the message names the field
        fields = URI_FIELDS
        assert exc.details().startswith(fields), exc.details()[:200]
    _still_fine(stack, runs_before)


@settings(max_examples=100)
@given(data=st.data())
def test_evaluate_with_random_uris(
    stack: ServiceStack,
    runs_before: list[Path],
    junk: dict[str, str],
    scorecard_sha: str,
    data: st.DataObject,
) -> None:
    """The right scorecard, so every request gets as far as fetching and checking files."""
    uri = uris(junk)
    request = scorecard_pb2.EvaluateRequest(
        scorecard=KNOWN_SCORECARD,
        scorecard_sha256=data.draw(st.sampled_from(["", scorecard_sha]), "sha"),
        model_uri=data.draw(uri | st.just(junk["model_uri"]), "model_uri"),
        baseline_model_uri=data.draw(st.just("") | uri, "baseline_model_uri"),
        test_set_uri=data.draw(uri | st.just(junk["test_set_uri"]), "test_set_uri"),
        test_set_sha256=data.draw(st.just(junk["test_set_sha256"]) | TEXT, "test_set_sha256"),
        artifacts_uri=data.draw(st.just("") | uri, "artifacts_uri"),
    )
    exc = _refused(stack.scorecard_stub().Evaluate, request, timeout=20)
    assert exc.code() in BAD_URI, exc.details()
    field = exc.details().split(":")[0]
    event(f"{exc.code().name} {field}")
    assert field in URI_FIELDS
    if field == "test_set_uri" and request.test_set_uri:  # names the URI, not a temporary copy
        uri = request.test_set_uri
        assert uri[:60] in exc.details() or shown(uri)[:60] in exc.details(), exc.details()
        assert "mlipilot-eval-" not in exc.details()
    _still_fine(stack, runs_before)


@settings(max_examples=100)
@given(name=TEXT.filter(lambda n: n != KNOWN_SCORECARD))
def test_unknown_scorecards_are_not_found(
    stack: ServiceStack, runs_before: list[Path], name: str
) -> None:
    request = scorecard_pb2.GetScorecardRequest(name=name)
    exc = _refused(stack.scorecard_stub().GetScorecard, request, timeout=5)
    assert exc.code() == grpc.StatusCode.NOT_FOUND
    assert KNOWN_SCORECARD in exc.details()  # says what is known
    _still_fine(stack, runs_before)


def test_a_junk_test_set_names_its_uri_not_a_temporary_copy(
    stack: ServiceStack, runs_before: list[Path], junk: dict[str, str]
) -> None:
    request = scorecard_pb2.EvaluateRequest(
        scorecard=KNOWN_SCORECARD,
        model_uri=junk["model_uri"],
        test_set_uri=junk["test_set_uri"],
        test_set_sha256=junk["test_set_sha256"],
    )
    exc = _refused(stack.scorecard_stub().Evaluate, request, timeout=20)
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.details().startswith(f"test_set_uri: {junk['test_set_uri']}: "), exc.details()
    assert "cannot parse as extended XYZ" in exc.details()
    assert "mlipilot-eval-" not in exc.details()
    _still_fine(stack, runs_before)
