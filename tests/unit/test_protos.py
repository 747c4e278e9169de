"""The committed stubs match the protos, and the API spells out what the contract promises."""

from __future__ import annotations

from pathlib import Path

from mlipilot.rpc.codegen import PACKAGE, SERVICES_ROOT, generate, proto_files
from mlipilot.v1 import orchestrator_pb2, scorecard_pb2


def test_committed_stubs_are_what_the_protos_generate(tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in generate(tmp_path)}
    committed = {
        p.name: p.read_bytes() for p in (SERVICES_ROOT / PACKAGE).iterdir() if "_pb2" in p.name
    }
    assert sorted(committed) == sorted(fresh), "stale or missing stubs: run `make protos`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stubs out of date with the protos: {stale}; run `make protos`"
    assert len(proto_files()) == 3


def test_api_is_versioned_and_has_the_promised_methods() -> None:
    orchestrator = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]
    assert orchestrator.full_name == "mlipilot.v1.OrchestratorService"
    methods = {m.name: m for m in orchestrator.methods}
    assert set(methods) == {
        "CreateCampaign",
        "GetCampaign",
        "ListCampaigns",
        "WatchCampaign",
        "CancelCampaign",
        "FetchArtifact",
    }
    assert methods["WatchCampaign"].server_streaming
    assert methods["FetchArtifact"].server_streaming
    scorecard = scorecard_pb2.DESCRIPTOR.services_by_name["ScorecardService"]
    methods = {m.name: m for m in scorecard.methods}
    assert set(methods) == {"Evaluate", "ListScorecards", "GetScorecard"}
    assert methods["Evaluate"].server_streaming
    event_kinds = {f.name for f in orchestrator_pb2.CampaignEvent.DESCRIPTOR.oneofs[0].fields}
    assert {
        "iteration_started",
        "proposal",
        "training_progress",
        "scorecard_progress",
        "result",
        "decision",
        "campaign_finished",
    } <= event_kinds
