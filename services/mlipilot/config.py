"""The campaign file: what to train on, how to judge, who proposes, and the budget.

Validated on load; relative paths are resolved against the campaign file's folder so a
campaign file works from any working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from mlipilot.errors import MlipilotError, format_validation_error, shown
from mlipilot.recipe import Recipe, describe_recipe_error
from mlipilot.yaml_files import load_yaml_model, parse_yaml_model

ENDPOINT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
MAX_EXTRA_BODY_BYTES = 16 << 10
MAX_CAMPAIGN_FILE_BYTES = 256 << 10  # a campaign file is a page of YAML, not a data set


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CuEmtData(_Strict):
    """Periodic fcc Cu labelled with ASE's EMT (data/cu_emt.py)."""

    kind: Literal["cu-emt"] = "cu-emt"
    path: Path = Field(description="data folder; generated there from the seed when absent")
    seed: int = Field(0, ge=0)
    n_train: int = Field(96, ge=4, le=100_000)
    n_test: int = Field(32, ge=2, le=100_000)
    extra_train: dict[
        Literal["hot_md", "wide_strain", "surface", "short_pair", "vacancy_strain"],
        Annotated[int, Field(ge=0, le=100_000)],
    ] = Field(
        default_factory=dict,
        description="frames of further families added to the training split only: hot_md "
        "(NVT at 1800-3000 K), wide_strain (isotropic -12 to +30 %), surface ((100), (110), "
        "(111) slabs), short_pair (a neighbour pair pushed to 1.4-2.4 Å), vacancy_strain (a "
        "vacancy at -3 to +3 % isotropic strain)",
    )


class Qm7Data(_Strict):
    """QM7-like molecules (data/molecules): sampled, labelled at ``level``, split by molecule.

    The same data as ``mlipilot data qm7`` with these settings, which is the way to build a
    B3LYP set beforehand on a Ray cluster; the campaign then opens it.
    """

    kind: Literal["qm7"]
    path: Path = Field(description="data folder; built there when absent, resumable")
    seed: int = Field(0, ge=0, description="sampling and split seed")
    molecules: int = Field(40, ge=2, le=100_000, description="first N of the molecule list")
    level: Literal["quick", "b3lyp/6-31g*"] = Field(
        "quick", description="quick: GFN2-xTB (tblite), NOT B3LYP; b3lyp/6-31g*: PySCF"
    )
    configs_per_molecule: int = Field(4, ge=1, le=1000)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of molecules held out")


def _data_kind(value: Any) -> str:
    # `kind` may be left out of a Cu EMT data section (it was the only kind once).
    kind = value.get("kind", "cu-emt") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in ("cu-emt", "qm7") else "unknown"


DataConfig = Annotated[
    Annotated[CuEmtData, Tag("cu-emt")] | Annotated[Qm7Data, Tag("qm7")],
    Discriminator(
        _data_kind,
        custom_error_type="data_kind",
        custom_error_message="data.kind must be 'cu-emt' or 'qm7'",
    ),
]


class LlmOptions(_Strict):
    """How an LLM agent talks to its model: the campaign file's ``agent:`` keys for
    ``kind: llm``, and (with the server's address) the agent's own settings
    (``agents/llm/agent.py``'s ``LlmSettings``): one definition for both."""

    tool_mode: Literal["tools", "json_schema"] = Field(
        "tools", description="tool calling, or structured output for servers without tools"
    )
    tool_choice: Literal["auto", "required", "propose"] = Field(
        "auto", description="'propose' names the tool: for chat templates without tools"
    )
    tool_call_ids: Literal["auto", "openai", "mistral"] = Field(
        "auto", description="mistral: 9-character ids (auto: when the model name says mistral)"
    )
    thinking: bool | None = Field(None, description="Qwen3 thinking on/off (server default)")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens_per_iteration: int = Field(40_000, ge=256, le=10_000_000)
    max_completion_tokens: int = Field(2048, ge=16, le=1_000_000, description="per call")
    max_turns: int = Field(8, ge=1, le=100, description="model calls per proposal")
    max_tool_errors: int = Field(3, ge=0, le=50, description="bad answers before failing")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="per HTTP request")
    max_retries: int = Field(4, ge=0, le=20, description="on 429, 5xx and dropped connections")
    max_response_bytes: int = Field(
        1 << 20,
        ge=64 << 10,
        le=64 << 20,
        description="a longer reply from the server is refused, unread past this, not retried",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="more request fields for the server, e.g. {repetition_penalty: 1.1} (vLLM)",
    )

    @field_validator("extra_body")
    @classmethod
    def _small_extra_body(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, default=str))
        if size > MAX_EXTRA_BODY_BYTES:
            raise ValueError(f"{size} bytes as JSON; at most {MAX_EXTRA_BODY_BYTES}")
        return value


class AgentConfig(LlmOptions):
    kind: Literal["rule-based", "random", "optuna", "llm", "replay"] = "rule-based"
    seed: int = Field(0, ge=0)
    # -- kind: llm (an OpenAI-compatible server: vLLM, llama.cpp, ...), with LlmOptions' keys
    base_url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        max_length=2000,
        description="e.g. http://vllm:8000/v1 (kind: llm)",
    )
    endpoint: str | None = Field(
        None,
        pattern=ENDPOINT_NAME,
        description="campaigns sent to an orchestrator server: one of its configured model "
        "servers (its --llm-endpoint NAME=URL), instead of base_url and api_key_env",
    )
    model: str | None = Field(
        None, min_length=1, max_length=500, description="a model id the server lists"
    )
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="variable holding the API key"
    )
    # -- kind: replay
    ledger: Path | None = Field(None, description="run folder whose proposals are replayed")

    @model_validator(mode="after")
    def _kind_needs(self) -> AgentConfig:
        needed = {"llm": ("model",), "replay": ("ledger",)}.get(self.kind, ())
        missing = [f"agent.{k}" for k in needed if getattr(self, k) is None]
        if self.kind == "llm" and self.base_url is None and self.endpoint is None:
            missing.insert(0, "agent.base_url (or agent.endpoint on a server)")
        if missing:
            raise ValueError(f"agent kind {self.kind!r} needs {', '.join(missing)}")
        return self


class BudgetConfig(_Strict):
    iterations: int = Field(6, ge=0, le=100_000, description="proposals after the baseline")
    epochs: int = Field(12, ge=1, le=10_000, description="training epochs per candidate")
    max_train_seconds: float = Field(
        900, gt=0, description="wall-clock guard per candidate; over it the candidate fails"
    )
    agent_retries: int = Field(2, ge=0, le=10, description="refused proposals before giving up")
    candidates_per_iteration: int = Field(
        1, ge=1, le=1024, description="proposals trained and scored side by side each iteration"
    )
    agent_tokens: int | None = Field(
        None, ge=1, description="LLM tokens (prompt + completion) for the whole campaign"
    )
    scheduler: Literal["sync", "async"] = Field(
        "sync",
        description="sync: ask for an iteration's candidates, train them all, decide, ask again; "
        "async: keep max_in_flight candidates training, decide each as it finishes against the "
        "incumbent of that moment and ask for the next while the others run",
    )
    max_in_flight: int | None = Field(
        None, ge=1, le=1024, description="async: candidates training and scoring at once"
    )
    asks_in_flight: int = Field(
        1,
        ge=1,
        le=1024,
        description="async: proposals asked of the agent at once, each while candidates train "
        "(an LLM server such as vLLM answers them side by side); at most max_in_flight",
    )

    @model_validator(mode="after")
    def _scheduler_needs(self) -> BudgetConfig:
        if self.scheduler == "async":
            if self.max_in_flight is None:
                raise ValueError("budget.scheduler 'async' needs budget.max_in_flight")
            if self.candidates_per_iteration != 1:
                raise ValueError(
                    "budget.candidates_per_iteration is for scheduler 'sync'; with 'async', "
                    "budget.max_in_flight says how many run at once"
                )
            if self.asks_in_flight > self.max_in_flight:
                raise ValueError(
                    f"budget.asks_in_flight {self.asks_in_flight} is more than "
                    f"budget.max_in_flight {self.max_in_flight}: a proposal needs a free slot"
                )
        elif self.max_in_flight is not None:
            raise ValueError("budget.max_in_flight needs budget.scheduler: async")
        elif self.asks_in_flight != 1:
            raise ValueError("budget.asks_in_flight needs budget.scheduler: async")
        return self

    @property
    def side_by_side(self) -> int:
        """Candidates that train at once: an iteration's (sync), or those in flight (async)."""
        return self.max_in_flight or self.candidates_per_iteration


class RayResources(_Strict):
    """What one Ray trainer actor or MD task asks the cluster for."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="GPUs per task; 'auto': one when the Ray cluster has GPUs, else none",
    )

    def resolved(self, cluster: dict[str, float]) -> RayResources:
        """Concrete numbers for a cluster with these resources (``ray.cluster_resources()``)."""
        if self.num_gpus != "auto":
            return self
        return self.model_copy(update={"num_gpus": 1.0 if cluster.get("GPU", 0) >= 1 else 0.0})

    @property
    def gpus(self) -> float:
        """GPUs per task, once resolved."""
        if self.num_gpus == "auto":
            raise ValueError("num_gpus 'auto' is resolved against the cluster first")
        return float(self.num_gpus)


class ComputeConfig(_Strict):
    device: Literal["cpu", "cuda"] = "cpu"
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads for training and scoring (default: all cores)"
    )
    ray_address: str | None = Field(
        None,
        pattern=r"^(local|auto|ray://\S+|[A-Za-z0-9_.-]+:\d+)$",
        description=(
            "where candidates train: 'local' (start Ray here), 'auto' (the cluster this machine "
            "is in), 'ray://host:10001', or host:port. Unset: in this process when one "
            "candidate per iteration, a local Ray instance when more"
        ),
    )
    trainer: RayResources = RayResources()
    md: RayResources = RayResources()

    def uses_ray(self, candidates_per_iteration: int) -> bool:
        return self.ray_address is not None or candidates_per_iteration > 1


class NoiseConfig(_Strict):
    """Noise-aware acceptance: a would-be accept is checked again over several training seeds.

    Seeds run ``recipe.seed``, ``recipe.seed + 1``, ... (``seeds`` of them per side); the gain
    must exceed ``k`` times the spread of a difference of two single runs (campaign/decision.py).
    ``seeds: 1`` switches it off, as leaving the section out does.
    """

    seeds: int = Field(
        ge=1,
        le=10,
        description="training seeds per side (candidate and incumbent), the recipe's own first; "
        "1 is off",
    )
    k: float = Field(
        1.0, gt=0.0, le=10.0, description="accept only when the mean gain exceeds k x spread"
    )


class ValidationConfig(_Strict):
    """After the campaign, its best model checked on physics the scorecard never sees.

    The agent never sees the results: they go to the ledger, the summary and the report.
    """

    suite: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="a suite of the repository's validation/ by name (cu-emt), or a suite file "
        "(mlipilot run only); unset: the best model is not validated, and the campaign says so",
    )
    accepts: bool = Field(
        False, description="also validate every accepted candidate as it is accepted"
    )

    @property
    def suite_is_a_file(self) -> bool:
        return self.suite is not None and ("/" in self.suite or self.suite.endswith(".yaml"))


class Campaign(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = Field("", max_length=10_000)
    data: DataConfig
    scorecard: Path
    baseline: Recipe
    agent: AgentConfig = AgentConfig()
    budget: BudgetConfig = BudgetConfig()
    compute: ComputeConfig = ComputeConfig()
    min_improvement: float = Field(
        0.0, ge=0.0, lt=1.0, description="relative composite gain needed to accept"
    )
    noise: NoiseConfig | None = Field(
        None, description="repeat a would-be accept and its incumbent over seeds (off: absent)"
    )
    validation: ValidationConfig = ValidationConfig()
    mode: Literal["recipe", "code"] = Field(
        "recipe",
        description="recipe: agents turn the recipe's knobs; code: they also edit the training "
        "program (by unified diff), which runs sandboxed",
    )
    editable: list[str] = Field(
        default_factory=lambda: ["training/program.py"],
        min_length=1,
        max_length=20,
        description="code mode: the program files an agent may change, relative to the program",
    )

    @field_validator("editable")
    @classmethod
    def _plain_relative_paths(cls, paths: list[str]) -> list[str]:
        for p in paths:
            parts = Path(p).parts
            bad = not p or len(p) > 200 or Path(p).is_absolute() or {"..", ".git"} & set(parts)
            if bad or p != Path(p).as_posix():
                raise ValueError(f"{p!r} must be a plain relative path inside the program")
        return paths

    @model_validator(mode="after")
    def _code_mode_asks_one_at_a_time(self) -> Campaign:
        # A code-mode proposal is a diff of the program on main when it was asked: asked one
        # at a time, main cannot move between the agent reading it and the proposal's base.
        if self.mode == "code" and self.budget.asks_in_flight > 1:
            raise ValueError(
                "budget.asks_in_flight: mode 'code' asks one proposal at a time (each diff is "
                "made against the program of its moment)"
            )
        return self

    @property
    def noise_seeds(self) -> int:
        """Training seeds per side for a would-be accept: 1 when noise-aware acceptance is off."""
        return self.noise.seeds if self.noise is not None else 1

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline_recipe(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, dict):
            try:
                return Recipe.model_validate(value)
            except ValidationError as exc:
                raise ValueError(describe_recipe_error(exc, "baseline")) from exc
        return value


def load_campaign(path: str | Path) -> tuple[Campaign, str]:
    """Load and validate a campaign file; return it (paths made absolute) and its sha256."""
    path = Path(path)
    campaign, digest = load_yaml_model(
        path, Campaign, "campaign file", max_bytes=MAX_CAMPAIGN_FILE_BYTES
    )
    return _resolved(campaign, path.resolve().parent), digest


def parse_campaign(text: str, source_name: str, base_dir: Path) -> tuple[Campaign, str]:
    """A campaign file sent as text; relative paths resolve against ``base_dir``."""
    campaign, digest = parse_campaign_text(text, source_name)
    return resolved_paths(campaign, base_dir, source_name), digest


def campaign_where(source_name: str) -> str:
    """How messages name a campaign file sent as text."""
    return f"campaign file {source_name or '(unnamed)'}"


def parse_campaign_text(text: str, source_name: str) -> tuple[Campaign, str]:
    """A campaign file sent as text, validated, paths as written (not resolved)."""
    raw = text.encode(errors="surrogateescape")
    if len(raw) > MAX_CAMPAIGN_FILE_BYTES:
        raise MlipilotError(
            f"{campaign_where(source_name)}: {len(raw)} bytes; a campaign file may have at most "
            f"{MAX_CAMPAIGN_FILE_BYTES}",
            fields=("campaign_yaml",),
        )
    return parse_yaml_model(raw, Campaign, campaign_where(source_name))


def resolved_paths(campaign: Campaign, base_dir: Path, source_name: str) -> Campaign:
    """``campaign`` with relative paths resolved against ``base_dir`` (a server's or the
    client's folder), or an error naming base_dir when it cannot be."""
    try:
        root = base_dir.resolve()
    except (OSError, ValueError) as exc:  # e.g. a NUL byte in a base_dir sent over gRPC
        raise MlipilotError(
            f"{campaign_where(source_name)}: base folder {shown(str(base_dir))} is not usable: "
            f"{exc}",
            fields=("base_dir",),
        ) from exc
    return _resolved(campaign, root)


def _resolved(campaign: Campaign, root: Path) -> Campaign:
    update: dict[str, Any] = {
        "scorecard": root / campaign.scorecard,
        "data": campaign.data.model_copy(update={"path": root / campaign.data.path}),
    }
    if campaign.agent.ledger is not None:
        update["agent"] = campaign.agent.model_copy(update={"ledger": root / campaign.agent.ledger})
    if campaign.validation.suite_is_a_file:
        suite = str(root / str(campaign.validation.suite))
        update["validation"] = campaign.validation.model_copy(update={"suite": suite})
    return campaign.model_copy(update=update)


def override(
    campaign: Campaign,
    *,
    agent: str | None = None,
    iterations: int | None = None,
    **agent_settings: Any,
) -> Campaign:
    """Apply command-line overrides, validated like the file itself.

    ``agent_settings`` are agent keys (``base_url``, ``model``, ...); None leaves one as is.
    """
    data = campaign.model_dump()
    if agent is not None:
        data["agent"]["kind"] = agent
    unknown = sorted(set(agent_settings) - set(AgentConfig.model_fields))
    if unknown:
        raise MlipilotError(f"command-line override: unknown agent setting(s) {unknown}")
    data["agent"].update({k: v for k, v in agent_settings.items() if v is not None})
    if iterations is not None:
        data["budget"]["iterations"] = iterations
    try:
        return Campaign.model_validate(data)
    except ValidationError as exc:
        raise MlipilotError(format_validation_error(exc, "command-line override")) from exc
