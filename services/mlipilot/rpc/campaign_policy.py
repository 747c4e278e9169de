"""What a campaign sent to the orchestrator service may ask of the server.

``mlipilot run`` trusts its campaign file: its user wrote it and runs it as themselves. A
campaign sent over gRPC comes from a caller, who must not be able to choose the server's
network, secrets or files through it. So a served campaign:

- names its scorecard among the specs the server serves (``--scorecards``), by name or by the
  file name it had on the client (``../scorecard/cu-emt.yaml`` is ``cu-emt.yaml``); no path
  the caller gives is ever opened, so no file's content can come back in an error;
- keeps its data under the server's data roots (``--data-root``) and replays ledgers of this
  server's own runs only;
- names one of the server's LLM endpoints (``agent.endpoint``; ``--llm-endpoint NAME=URL``
  with ``--llm-key-env NAME=VAR`` saying which secret goes to which) and may not set
  ``agent.base_url`` or ``agent.api_key_env``: otherwise any server variable could be sent as
  a bearer token to any URL;
- uses the server's Ray cluster or none: ``compute.ray_address`` may be left out or be
  ``auto`` (the cluster the server is configured for, ``RAY_ADDRESS``) or ``local``; a Ray
  client unpickles what a Ray server sends it, so a caller-chosen address is code execution;
- names its validation suite among the server's (``validation.suite``), never a file.

Everything here is checked before the run folder exists or a file is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlipilot.config import Campaign, campaign_where, resolved_paths
from mlipilot.errors import MlipilotError, shown

SERVED_RAY_ADDRESSES = (None, "auto", "local")


class CampaignDenied(MlipilotError):
    """A campaign asks for something only the server's operator may choose."""


@dataclass(frozen=True)
class LlmEndpoint:
    name: str
    base_url: str
    api_key_env: str | None = None  # the server variable holding its key


@dataclass
class CampaignPolicy:
    """The server's side of a served campaign: its catalog, roots and endpoints."""

    scorecards: dict[str, Path]  # spec name -> its file in the server's catalog
    data_roots: list[Path]
    runs_root: Path
    llm_endpoints: dict[str, LlmEndpoint] = field(default_factory=dict)
    validation_suites: list[str] = field(default_factory=list)  # names in its validation/

    def __post_init__(self) -> None:
        self.data_roots = [Path(os.path.realpath(r)) for r in self.data_roots]
        self.runs_root = Path(os.path.realpath(self.runs_root))

    def admit(self, written: Campaign, base_dir: Path, source_name: str) -> Campaign:
        """The campaign as this server runs it: relative paths resolved against ``base_dir``
        (the request's, or the server's folder), its scorecard file from the catalog, its
        agent's endpoint filled in.

        Raises CampaignDenied (PERMISSION_DENIED) for what the caller may not choose, and
        MlipilotError with the field (INVALID_ARGUMENT) for a name the server does not know.
        """
        where = campaign_where(source_name)
        scorecard = self._scorecard(written.scorecard, where)
        campaign = resolved_paths(written, base_dir, source_name)
        update: dict[str, Any] = {"scorecard": scorecard}
        self._check_under(campaign.data.path, self.data_roots, where, "data.path", "--data-root")
        agent = campaign.agent
        if agent.ledger is not None:
            self._check_under(agent.ledger, [self.runs_root], where, "agent.ledger", "--runs")
        if agent.kind == "llm" or agent.endpoint is not None:
            update["agent"] = self._agent(campaign, where)
        self._check_validation(campaign, where)
        address = campaign.compute.ray_address
        if address not in SERVED_RAY_ADDRESSES:
            raise CampaignDenied(
                f"{where}: compute.ray_address: {shown(address)}: a campaign sent to a server "
                "uses the server's Ray cluster: leave it out, or write auto or local",
                fields=("compute.ray_address",),
            )
        return campaign.model_copy(update=update)

    def _check_validation(self, campaign: Campaign, where: str) -> None:
        config = campaign.validation
        if config.suite is None:
            return
        known = ", ".join(sorted(self.validation_suites)) or "none"
        if config.suite_is_a_file:
            raise CampaignDenied(
                f"{where}: validation.suite: {shown(config.suite)}: a campaign sent to a server "
                f"names one of its suites ({known}), not a file",
                fields=("validation.suite",),
            )
        if config.suite not in self.validation_suites:
            raise MlipilotError(
                f"{where}: validation.suite: {shown(config.suite)} is not a suite this server "
                f"has; name one of: {known}",
                fields=("validation.suite",),
            )

    def _scorecard(self, written: Path, where: str) -> Path:
        for name, path in self.scorecards.items():
            if written.name in (name, f"{name}.yaml", path.name):
                return path
        known = ", ".join(sorted(self.scorecards)) or "none"
        raise MlipilotError(
            f"{where}: scorecard: {shown(str(written))} is not a scorecard this server serves; "
            f"name one of: {known}",
            fields=("scorecard",),
        )

    def _check_under(self, path: Path, roots: list[Path], where: str, key: str, flag: str) -> None:
        try:
            real = Path(os.path.realpath(path))
        except (OSError, ValueError):
            real = None
        if real is None or not any(real.is_relative_to(root) for root in roots):
            raise CampaignDenied(
                f"{where}: {key}: {shown(str(path))} is outside the folders this server "
                f"keeps campaigns' files in (its {flag})",
                fields=(key,),
            )

    def _agent(self, campaign: Campaign, where: str) -> Any:
        agent = campaign.agent
        for key in ("base_url", "api_key_env"):
            if getattr(agent, key) is not None:
                raise CampaignDenied(
                    f"{where}: agent.{key}: a campaign sent to a server cannot choose the model "
                    "server or its key; name one of the server's endpoints with agent.endpoint "
                    f"({self._endpoint_names()})",
                    fields=(f"agent.{key}",),
                )
        name = agent.endpoint
        endpoint = self.llm_endpoints.get(name or "")
        if endpoint is None:
            raise MlipilotError(
                f"{where}: agent.endpoint: {shown(name)} is not one of this server's model "
                f"servers ({self._endpoint_names()})",
                fields=("agent.endpoint",),
            )
        return agent.model_copy(
            update={
                "endpoint": endpoint.name,
                "base_url": endpoint.base_url,
                "api_key_env": endpoint.api_key_env,
            }
        )

    def _endpoint_names(self) -> str:
        if not self.llm_endpoints:
            return "it has none: its operator configures them with --llm-endpoint NAME=URL"
        return "it has: " + ", ".join(sorted(self.llm_endpoints))


def parse_endpoints(urls: list[str], key_envs: list[str]) -> dict[str, LlmEndpoint]:
    """``--llm-endpoint NAME=URL`` and ``--llm-key-env NAME=VAR`` flags as endpoints."""
    from mlipilot.config import AgentConfig

    endpoints: dict[str, LlmEndpoint] = {}
    for item in urls:
        name, _, url = item.partition("=")
        try:
            AgentConfig(kind="llm", endpoint=name, base_url=url, model="m")
        except ValueError as exc:
            raise MlipilotError(
                f"--llm-endpoint {item!r}: expected NAME=http(s)://host:port/v1 ({exc})"
            ) from None
        if name in endpoints:
            raise MlipilotError(f"--llm-endpoint {name}: given twice")
        endpoints[name] = LlmEndpoint(name, url)
    for item in key_envs:
        name, _, variable = item.partition("=")
        if name not in endpoints:
            raise MlipilotError(f"--llm-key-env {item!r}: no --llm-endpoint named {name!r}")
        try:
            AgentConfig(api_key_env=variable)
        except ValueError:
            raise MlipilotError(f"--llm-key-env {item!r}: expected NAME=VARIABLE") from None
        endpoints[name] = LlmEndpoint(name, endpoints[name].base_url, variable)
    return endpoints
