"""The dashboard's JSON API as a script (or an attacker) meets it: read-only, confined to its
runs folder, and valid JSON whatever a campaign recorded."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import dashboard_events, serve_dashboard

from mlipilot.ledger import Ledger, LedgerEvent

TOKEN = "api-test-token"
REPO = Path(__file__).resolve().parents[2]


def _get(base: str, path: str, token: str | None = TOKEN, method: str = "GET"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(base + path, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def _status(base: str, path: str, method: str = "GET") -> int:
    try:
        _get(base, path, method=method)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def _campaign(runs: Path, name: str, events: list[LedgerEvent]) -> Path:
    run_dir = runs / name
    run_dir.mkdir()
    shutil.copyfile(REPO / "scorecard" / "cu-emt.yaml", run_dir / "scorecard.yaml")
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        ledger.append_all([e.model_copy(update={"campaign": name}) for e in events])
    return run_dir


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    runs = tmp_path / "runs"
    runs.mkdir()
    started, baseline, later = dashboard_events("x")
    _campaign(runs, "cu-a-20261205-000000", started + baseline + later)
    _campaign(runs, "cu-new-20261205-000001", [])  # created, nothing recorded yet
    (tmp_path / "secret").mkdir()
    _campaign(tmp_path / "secret", "outside-20261205-000000", started + baseline)
    (runs / "linked-20261205-000000").symlink_to(tmp_path / "secret" / "outside-20261205-000000")
    with serve_dashboard(runs, TOKEN) as base:
        yield base, runs


def test_campaigns_are_listed_with_counts_that_say_what_they_count(served) -> None:
    base, _ = served
    listed = {c["id"]: c for c in _get(base, "/api/campaigns")["campaigns"]}
    assert set(listed) == {"cu-a-20261205-000000", "cu-new-20261205-000001"}  # no symlink
    a = listed["cu-a-20261205-000000"]
    assert (a["proposals"], a["decided"], a["agent_failures"]) == (1, 1, 0)
    assert a["best_candidate"] == "it001" and a["status"] == "running"
    assert listed["cu-new-20261205-000001"]["status"] == "starting"
    # One colour per campaign, whatever view asks.
    compared = _get(base, "/api/compare?ids=cu-a-20261205-000000,cu-new-20261205-000001")
    assert compared["campaigns"][0]["summary"]["color"] == a["color"]


def test_a_candidate_shows_its_change_against_the_incumbent_it_came_from(served) -> None:
    base, _ = served
    shown = _get(base, "/api/campaigns/cu-a-20261205-000000/candidates/it001")
    assert shown["recipe_diff"] == [{"key": "lr", "incumbent": 0.001, "candidate": 0.01}]
    assert [r["epoch"] for r in shown["training"]["curve"]] == [0, 1]
    assert shown["decision"]["verdict"] == "ACCEPT"
    assert {c["metric"] for c in shown["constraints"]} >= {"energy_mae_meV_per_atom"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/campaigns/..%2Fsecret%2Foutside-20261205-000000",
        "/api/campaigns/linked-20261205-000000",
        "/api/campaigns/..",
        "/api/campaigns/cu-a-20261205-000000/candidates/..%2F..%2Fledger.sqlite",
        "/api/campaigns/cu-a-20261205-000000/candidates/it009",
        "/static/..%2F..%2Fserver.py",
        "/static/../feeds.py",
    ],
)
def test_nothing_outside_the_runs_folder_or_the_page_is_served(served, path: str) -> None:
    base, _ = served
    assert _status(base, path) in (400, 403, 404)


def test_the_api_is_read_only(served) -> None:
    base, _ = served
    for method in ("POST", "PUT", "DELETE"):
        assert _status(base, "/api/campaigns", method=method) == 405


def test_non_finite_numbers_are_sent_as_missing_not_as_invalid_json(served) -> None:
    base, runs = served
    with Ledger(runs / "cu-a-20261205-000000" / "ledger.sqlite") as ledger:
        ledger.append(
            LedgerEvent(
                campaign="cu-a-20261205-000000",
                event="decision",
                iteration=2,
                candidate="it002",
                decision="REVERT",
                reason="nan loss",
                composite=float("nan"),
                violation=float("inf"),
            )
        )
    view = _get(base, "/api/campaigns/cu-a-20261205-000000")
    last = view["score"]["points"][-1]
    assert last["composite"] is None and last["violation"] is None
