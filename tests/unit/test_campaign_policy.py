"""What a campaign sent to the orchestrator service may ask of the server (no server here; the
service's own tests send the same attacks over gRPC)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlipilot.config import parse_campaign_text
from mlipilot.errors import MlipilotError
from mlipilot.rpc.campaign_policy import (
    CampaignDenied,
    CampaignPolicy,
    LlmEndpoint,
    parse_endpoints,
)

CAMPAIGN = {
    "name": "served",
    "data": {"kind": "cu-emt", "path": "data/cu", "n_train": 16, "n_test": 8},
    "scorecard": "../scorecard/cu-emt.yaml",
    "baseline": {"lr": 0.001},
}


@pytest.fixture
def server(tmp_path: Path) -> CampaignPolicy:
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "cu-emt.yaml"
    spec.write_text("name: cu-emt\n")
    return CampaignPolicy(
        scorecards={"cu-emt": spec},
        data_roots=[tmp_path / "data"],
        runs_root=tmp_path / "runs",
        llm_endpoints={"vllm": LlmEndpoint("vllm", "http://vllm:8000/v1", "MLIPILOT_LLM_KEY")},
        validation_suites=["cu-emt"],
    )


def _admit(server: CampaignPolicy, base: Path, **changes: object):
    written, _ = parse_campaign_text(yaml.safe_dump({**CAMPAIGN, **changes}), "c.yaml")
    return server.admit(written, base, "c.yaml")


def test_a_campaign_within_the_servers_bounds_is_admitted(
    server: CampaignPolicy, tmp_path: Path
) -> None:
    campaign = _admit(server, tmp_path)
    assert campaign.scorecard == server.scorecards["cu-emt"]
    assert campaign.data.path == tmp_path / "data" / "cu"
    for name in ("cu-emt", "cu-emt.yaml", "/anywhere/else/cu-emt.yaml"):
        assert _admit(server, tmp_path, scorecard=name).scorecard == server.scorecards["cu-emt"]


def test_scorecards_are_named_never_opened(server: CampaignPolicy, tmp_path: Path) -> None:
    secret = tmp_path / "service-account.yaml"
    secret.write_text("private_key_id: 5ec2e7c0ffee\nname: cu-emt\n")
    with pytest.raises(MlipilotError) as info:
        _admit(server, tmp_path, scorecard=str(secret))
    assert info.value.fields == ("scorecard",)
    assert "5ec2e7c0ffee" not in str(info.value) and "cu-emt" in str(info.value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"data": {**CAMPAIGN["data"], "path": "/etc"}}, "data.path"),
        ({"data": {**CAMPAIGN["data"], "path": "data/../../elsewhere"}}, "data.path"),
        ({"agent": {"kind": "replay", "ledger": "/tmp/someone-elses-run"}}, "agent.ledger"),
        ({"compute": {"ray_address": "ray://attacker.example:10001"}}, "compute.ray_address"),
        ({"compute": {"ray_address": "10.0.0.9:6379"}}, "compute.ray_address"),
        (
            {"agent": {"kind": "llm", "base_url": "http://attacker.example/v1", "model": "m"}},
            "agent.base_url",
        ),
        (
            {"agent": {"kind": "llm", "endpoint": "vllm", "model": "m", "api_key_env": "HOME"}},
            "agent.api_key_env",
        ),
    ],
)
def test_what_only_the_operator_may_choose_is_denied(
    server: CampaignPolicy, tmp_path: Path, changes: dict, field: str
) -> None:
    with pytest.raises(CampaignDenied) as info:
        _admit(server, tmp_path, **changes)
    assert info.value.fields == (field,)
    assert str(info.value).startswith(f"campaign file c.yaml: {field}: ")


def test_a_symlink_out_of_the_data_root_is_denied(server: CampaignPolicy, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to("/etc")
    with pytest.raises(CampaignDenied, match=r"data\.path"):
        _admit(server, tmp_path, data={**CAMPAIGN["data"], "path": "data/link"})


def test_an_llm_agent_gets_the_servers_endpoint_and_key_variable(
    server: CampaignPolicy, tmp_path: Path
) -> None:
    agent = _admit(server, tmp_path, agent={"kind": "llm", "endpoint": "vllm", "model": "m"}).agent
    assert (agent.base_url, agent.api_key_env) == ("http://vllm:8000/v1", "MLIPILOT_LLM_KEY")
    with pytest.raises(MlipilotError, match="it has: vllm") as info:
        _admit(server, tmp_path, agent={"kind": "llm", "endpoint": "other", "model": "m"})
    assert info.value.fields == ("agent.endpoint",)


def test_ray_addresses_of_the_server_are_allowed(server: CampaignPolicy, tmp_path: Path) -> None:
    for address in ("auto", "local"):
        assert _admit(server, tmp_path, compute={"ray_address": address}).compute.ray_address


def test_endpoint_flags_are_checked() -> None:
    endpoints = parse_endpoints(["vllm=http://vllm:8000/v1"], ["vllm=MLIPILOT_LLM_KEY"])
    assert endpoints["vllm"] == LlmEndpoint("vllm", "http://vllm:8000/v1", "MLIPILOT_LLM_KEY")
    for urls, keys, words in [
        (["vllm"], [], "NAME=http"),
        (["vllm=ftp://x"], [], "NAME=http"),
        (["a=http://x/v1", "a=http://y/v1"], [], "given twice"),
        (["a=http://x/v1"], ["b=KEY"], "no --llm-endpoint named 'b'"),
        (["a=http://x/v1"], ["a=not a name"], "NAME=VARIABLE"),
    ]:
        with pytest.raises(MlipilotError, match=words):
            parse_endpoints(urls, keys)


def test_an_endpoint_name_means_nothing_to_a_local_run() -> None:
    from mlipilot.agents import make_agent
    from mlipilot.config import AgentConfig

    with pytest.raises(MlipilotError, match=r"set agent\.base_url") as info:
        make_agent(AgentConfig(kind="llm", endpoint="vllm", model="m"))
    assert info.value.fields == ("agent.endpoint",)


def test_yaml_aliases_are_refused_before_they_expand() -> None:
    """The 'billion laughs' that became a 1.5 GB campaign.json: 7 levels of aliases."""
    levels = ["  l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"  l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}]" for i in range(1, 8)]
    text = yaml.safe_dump(CAMPAIGN) + "agent:\n  kind: rule-based\n  extra_body:\n"
    text += "\n".join("  " + line for line in levels) + "\n"
    assert len(text) < 1000
    with pytest.raises(MlipilotError, match=r"aliases \(\*name\) are not allowed") as info:
        parse_campaign_text(text, "laughs.yaml")
    assert len(str(info.value)) < 1000


def test_oversized_campaign_files_and_extra_bodies_are_refused() -> None:
    big = yaml.safe_dump({**CAMPAIGN, "description": "x" * 300_000})
    with pytest.raises(MlipilotError, match="a campaign file may have at most") as info:
        parse_campaign_text(big, "big.yaml")
    assert info.value.fields == ("campaign_yaml",)
    body = {f"k{i}": "v" * 100 for i in range(300)}
    agent = {"kind": "llm", "base_url": "http://h/v1", "model": "m", "extra_body": body}
    with pytest.raises(MlipilotError, match=r"agent\.extra_body"):
        parse_campaign_text(yaml.safe_dump({**CAMPAIGN, "agent": agent}), "body.yaml")


def test_a_served_campaign_names_its_validation_suite(
    server: CampaignPolicy, tmp_path: Path
) -> None:
    assert _admit(server, tmp_path, validation={"suite": "cu-emt"}).validation.suite == "cu-emt"
    with pytest.raises(CampaignDenied) as info:
        _admit(server, tmp_path, validation={"suite": "/etc/passwd.yaml"})
    assert info.value.fields == ("validation.suite",)
    with pytest.raises(MlipilotError, match="name one of: cu-emt") as info:
        _admit(server, tmp_path, validation={"suite": "qm7"})
    assert info.value.fields == ("validation.suite",)
