"""Loading a campaign file: valid files resolve paths; every error names the file and the key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mlipilot.config import Campaign, load_campaign, override, parse_campaign_text
from mlipilot.errors import MlipilotError
from mlipilot.recipe import Recipe

CAMPAIGN_YAML = """\
name: cu-small
description: unit-test campaign
data:
  path: data/cu
  seed: 3
  n_train: 40
  n_test: 8
scorecard: ../scorecard/cu.yaml
baseline:
  r_max: 4.0
  num_channels: 8
agent:
  kind: random
  seed: 7
budget:
  iterations: 4
  epochs: 3
  max_train_seconds: 120
min_improvement: 0.02
"""


def write(tmp_path: Path, text: str, name: str = "campaign.yaml") -> Path:
    folder = tmp_path / "campaigns"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(MlipilotError) as info:
        load_campaign(path)
    return path, str(info.value)


def test_valid_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path, CAMPAIGN_YAML)
    campaign, digest = load_campaign(path)
    assert campaign.name == "cu-small"
    assert campaign.baseline == Recipe().patched({"r_max": 4.0, "num_channels": 8})
    assert (campaign.agent.kind, campaign.agent.seed) == ("random", 7)
    assert (campaign.budget.iterations, campaign.budget.epochs) == (4, 3)
    assert campaign.budget.agent_retries == 2  # default
    assert campaign.compute.device == "cpu"  # default section
    assert campaign.min_improvement == 0.02
    assert (campaign.data.seed, campaign.data.n_train, campaign.data.n_test) == (3, 40, 8)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_relative_paths_resolve_against_the_file_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, CAMPAIGN_YAML)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    campaign, _ = load_campaign(os.path.relpath(path, elsewhere))
    folder = path.parent.resolve()
    assert campaign.scorecard.is_absolute()
    assert campaign.scorecard.resolve() == (tmp_path / "scorecard" / "cu.yaml").resolve()
    assert campaign.scorecard == folder / "../scorecard/cu.yaml"
    assert campaign.data.path == folder / "data" / "cu"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    spec = tmp_path / "abs" / "spec.yaml"
    data = tmp_path / "abs" / "data"
    text = CAMPAIGN_YAML.replace("../scorecard/cu.yaml", str(spec)).replace(
        "path: data/cu", f"path: {data}"
    )
    campaign, _ = load_campaign(write(tmp_path, text))
    assert campaign.scorecard == spec
    assert campaign.data.path == data


def test_empty_baseline_is_the_default_recipe(tmp_path: Path) -> None:
    text = CAMPAIGN_YAML.replace("  r_max: 4.0\n  num_channels: 8\n", "")
    campaign, _ = load_campaign(write(tmp_path, text))
    assert campaign.baseline == Recipe()


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, CAMPAIGN_YAML + "epochs: 10\n")
    assert f"campaign file {path}" in message
    assert "epochs: unknown key" in message


def test_unknown_nested_key(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, CAMPAIGN_YAML.replace("  seed: 7\n", "  temp: 0.7\n"))
    assert f"campaign file {path}" in message
    assert "agent.temp: unknown key" in message


def test_bad_baseline_value_names_key_and_range(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, CAMPAIGN_YAML.replace("r_max: 4.0", "r_max: 9.0"))
    assert f"campaign file {path}" in message
    assert "baseline" in message
    assert "r_max = 9.0" in message
    assert "2.5 <= r_max <= 7.0" in message


def test_unknown_baseline_key_is_named(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, CAMPAIGN_YAML.replace("r_max: 4.0", "rmax: 4.0"))
    assert f"campaign file {path}" in message
    assert "'rmax'" in message
    assert "known keys" in message


def test_bad_agent_kind(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, CAMPAIGN_YAML.replace("kind: random", "kind: gpt"))
    assert f"campaign file {path}" in message
    assert "agent.kind" in message
    assert "'gpt'" in message
    assert "rule-based" in message


def test_negative_iterations(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, CAMPAIGN_YAML.replace("iterations: 4", "iterations: -1"))
    assert f"campaign file {path}" in message
    assert "budget.iterations" in message
    assert "-1" in message


def test_missing_required_key(tmp_path: Path) -> None:
    path, message = load_error(
        tmp_path, CAMPAIGN_YAML.replace("scorecard: ../scorecard/cu.yaml\n", "")
    )
    assert f"campaign file {path}" in message
    assert "scorecard" in message


def test_not_a_mapping(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, "- name: cu\n")
    assert f"campaign file {path}" in message
    assert "mapping" in message


def test_empty_file_is_not_a_mapping(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, "")
    assert f"campaign file {path}" in message
    assert "mapping" in message


def test_invalid_yaml(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, "name: cu\nbaseline: {r_max: 4.0\n")
    assert f"campaign file {path}" in message
    assert "not valid YAML" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(MlipilotError, match=f"campaign file {path}: cannot read"):
        load_campaign(path)


def test_override_agent_and_iterations(tmp_path: Path) -> None:
    campaign, _ = load_campaign(write(tmp_path, CAMPAIGN_YAML.replace("kind: random", "")))
    assert campaign.agent.kind == "rule-based"
    changed = override(campaign, agent="random", iterations=3)
    assert isinstance(changed, Campaign)
    assert changed.agent.kind == "random"
    assert changed.agent.seed == 7
    assert changed.budget.iterations == 3
    # Nothing else moves, and the original is untouched.
    assert changed.baseline == campaign.baseline
    assert changed.scorecard == campaign.scorecard
    assert changed.data == campaign.data
    assert changed.budget.epochs == campaign.budget.epochs
    assert (campaign.agent.kind, campaign.budget.iterations) == ("rule-based", 4)


def test_override_with_nothing_is_identity(tmp_path: Path) -> None:
    campaign, _ = load_campaign(write(tmp_path, CAMPAIGN_YAML))
    assert override(campaign) == campaign


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"agent": "nope"}, "agent.kind"), ({"iterations": -2}, "budget.iterations")],
)
def test_bad_override_is_a_user_error(tmp_path: Path, kwargs: dict[str, object], key: str) -> None:
    campaign, _ = load_campaign(write(tmp_path, CAMPAIGN_YAML))
    with pytest.raises(MlipilotError) as info:
        override(campaign, **kwargs)  # type: ignore[arg-type]
    assert "command-line override" in str(info.value)
    assert key in str(info.value)


def test_compute_defaults_run_in_process_with_one_candidate(tmp_path: Path) -> None:
    campaign, _ = load_campaign(write(tmp_path, CAMPAIGN_YAML))
    assert campaign.budget.candidates_per_iteration == 1
    assert campaign.compute.ray_address is None
    assert not campaign.compute.uses_ray(1)
    assert campaign.compute.uses_ray(2)  # more than one per iteration: a local Ray instance


@pytest.mark.parametrize("address", ["local", "auto", "ray://head:10001", "10.0.0.5:6379"])
def test_ray_addresses_accepted(tmp_path: Path, address: str) -> None:
    text = CAMPAIGN_YAML + f"compute:\n  ray_address: {address}\n  trainer: {{num_gpus: 1}}\n"
    campaign, _ = load_campaign(write(tmp_path, text))
    assert campaign.compute.ray_address == address and campaign.compute.uses_ray(1)
    assert campaign.compute.trainer.num_gpus == 1 and campaign.compute.md.num_cpus == 1


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("compute:\n  ray_address: 'my cluster'\n", "compute.ray_address"),
        ("compute:\n  trainer: {num_gpus: -1}\n", "compute.trainer.num_gpus"),
        ("compute:\n  md: {cores: 2}\n", "compute.md.cores"),
    ],
)
def test_bad_compute_names_the_key(tmp_path: Path, extra: str, key: str) -> None:
    path, message = load_error(tmp_path, CAMPAIGN_YAML + extra)
    assert f"campaign file {path}" in message and key in message


def test_candidates_per_iteration_bounds(tmp_path: Path) -> None:
    text = CAMPAIGN_YAML.replace("iterations: 4", "iterations: 4\n  candidates_per_iteration: 0")
    _, message = load_error(tmp_path, text)
    assert "budget.candidates_per_iteration" in message


@pytest.mark.parametrize("example", sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")))
def test_every_example_campaign_loads(example: Path) -> None:
    campaign, _ = load_campaign(example)
    assert campaign.scorecard.is_file()


def test_noise_is_off_unless_asked_for(tmp_path: Path) -> None:
    campaign, _ = load_campaign(write(tmp_path, CAMPAIGN_YAML))
    assert campaign.noise is None and campaign.noise_seeds == 1
    campaign, _ = load_campaign(write(tmp_path, CAMPAIGN_YAML + "noise: {seeds: 1}\n"))
    assert campaign.noise_seeds == 1  # one seed per side: nothing to repeat


def test_noise_option_loads(tmp_path: Path) -> None:
    campaign, _ = load_campaign(write(tmp_path, CAMPAIGN_YAML + "noise:\n  seeds: 3\n  k: 2\n"))
    assert campaign.noise is not None
    assert (campaign.noise.seeds, campaign.noise.k, campaign.noise_seeds) == (3, 2.0, 3)
    campaign, _ = load_campaign(write(tmp_path, CAMPAIGN_YAML + "noise: {seeds: 2}\n"))
    assert campaign.noise is not None and campaign.noise.k == 1.0  # default


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        ("noise: {seeds: 0}", "noise.seeds", "greater than or equal to 1"),
        ("noise: {seeds: 11}", "noise.seeds", "less than or equal to 10"),
        ("noise: {seeds: many}", "noise.seeds", "integer"),
        ("noise: {k: 2}", "noise.seeds", "required"),
        ("noise: {seeds: 3, k: 0}", "noise.k", "greater than 0"),
        ("noise: {seeds: 3, k: -1}", "noise.k", "greater than 0"),
        ("noise: {seeds: 3, repeats: 2}", "noise.repeats", "unknown key"),
        ("noise: 3", "noise", ""),
    ],
)
def test_bad_noise_names_the_key(tmp_path: Path, extra: str, key: str, says: str) -> None:
    path, message = load_error(tmp_path, CAMPAIGN_YAML + extra + "\n")
    assert f"campaign file {path}" in message and key in message
    assert says in message


QM7_DATA = """\
data:
  kind: qm7
  path: data/qm7
  molecules: 12
  level: quick
"""


def _with_data(section: str) -> str:
    start = CAMPAIGN_YAML.index("data:")
    end = CAMPAIGN_YAML.index("scorecard:")
    return CAMPAIGN_YAML[:start] + section + CAMPAIGN_YAML[end:]


def test_a_qm7_data_section_loads_with_its_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, _with_data(QM7_DATA))
    campaign, _ = load_campaign(path)
    data = campaign.data
    assert data.kind == "qm7"
    assert (data.molecules, data.level, data.configs_per_molecule) == (12, "quick", 4)
    assert (data.seed, data.test_fraction) == (0, 0.2)
    assert data.path == path.parent.resolve() / "data" / "qm7"


def test_a_data_section_without_kind_is_cu_emt(tmp_path: Path) -> None:
    campaign, _ = load_campaign(write(tmp_path, CAMPAIGN_YAML))
    assert campaign.data.kind == "cu-emt"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (QM7_DATA.replace("kind: qm7", "kind: qm9"), "data.kind must be 'cu-emt' or 'qm7'"),
        (QM7_DATA.replace("level: quick", "level: dft"), "level: Input should be 'quick'"),
        (QM7_DATA + "  n_train: 40\n", "n_train: unknown key"),
        (QM7_DATA.replace("molecules: 12", "molecules: 1"), "molecules: Input should be"),
        (QM7_DATA + "  test_fraction: 1.0\n", "test_fraction: Input should be less than 1"),
    ],
)
def test_bad_qm7_data_names_the_key(tmp_path: Path, section: str, expected: str) -> None:
    path, message = load_error(tmp_path, _with_data(section))
    assert str(path) in message
    assert expected in message


def test_gpus_are_taken_when_the_cluster_has_them_unless_the_file_says_otherwise() -> None:
    from mlipilot.config import RayResources

    auto = RayResources()
    assert auto.num_gpus == "auto"
    assert auto.resolved({"CPU": 64.0, "GPU": 8.0}).gpus == 1.0
    assert auto.resolved({"CPU": 2.0}).gpus == 0.0
    assert auto.resolved({"CPU": 2.0, "GPU": 0.5}).gpus == 0.0  # not a whole GPU anywhere
    fixed = RayResources(num_gpus=0)
    assert fixed.resolved({"GPU": 8.0}).gpus == 0.0  # a file that says none gets none
    assert RayResources(num_gpus=0.25).resolved({"GPU": 8.0}).gpus == 0.25
    with pytest.raises(ValueError, match="resolved"):
        _ = auto.gpus
    campaign, _ = parse_campaign_text(CAMPAIGN_YAML + "compute:\n  md: {num_gpus: auto}\n", "c")
    assert campaign.compute.md.num_gpus == "auto"


def test_async_scheduler_takes_max_in_flight_and_runs_that_many_on_ray(tmp_path: Path) -> None:
    text = CAMPAIGN_YAML.replace(
        "iterations: 4", "iterations: 4\n  scheduler: async\n  max_in_flight: 3"
    )
    campaign, _ = load_campaign(write(tmp_path, text))
    assert campaign.budget.side_by_side == 3
    assert campaign.compute.uses_ray(campaign.budget.side_by_side)
    sync, _ = load_campaign(write(tmp_path, CAMPAIGN_YAML, "sync.yaml"))
    assert sync.budget.scheduler == "sync" and sync.budget.side_by_side == 1
    noisy, _ = load_campaign(write(tmp_path, text + "noise: {seeds: 3}\n", "noisy.yaml"))
    assert noisy.noise_seeds == 3  # noise-aware acceptance runs asynchronously too


@pytest.mark.parametrize(
    ("budget", "extra", "says"),
    [
        ("scheduler: async", "", "needs budget.max_in_flight"),
        ("max_in_flight: 2", "", "needs budget.scheduler: async"),
        ("scheduler: async\n  max_in_flight: 2\n  candidates_per_iteration: 2", "", "with 'async'"),
        ("scheduler: async\n  max_in_flight: 2\n  asks_in_flight: 2", "mode: code\n", "one"),
        ("scheduler: later", "", "budget.scheduler"),
        ("scheduler: async\n  max_in_flight: 0", "", "budget.max_in_flight"),
        ("scheduler: async\n  max_in_flight: 2\n  asks_in_flight: 3", "", "a free slot"),
        ("asks_in_flight: 2", "", "asks_in_flight needs budget.scheduler: async"),
        ("scheduler: async\n  max_in_flight: 2\n  asks_in_flight: 0", "", "asks_in_flight"),
    ],
)
def test_bad_scheduler_settings_say_what_is_wrong(
    tmp_path: Path, budget: str, extra: str, says: str
) -> None:
    text = CAMPAIGN_YAML.replace("iterations: 4", f"iterations: 4\n  {budget}") + extra
    path, message = load_error(tmp_path, text)
    assert f"campaign file {path}" in message and says in message, message


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        ("{melt: 4}", "data.cu-emt.extra_train.melt", "hot_md"),
        ("{surface: -1}", "data.cu-emt.extra_train.surface", "greater than or equal to 0"),
        ("[surface]", "data.cu-emt.extra_train", "dictionary"),
    ],
)
def test_bad_extra_families_name_the_key(tmp_path: Path, extra: str, key: str, says: str) -> None:
    text = CAMPAIGN_YAML.replace("  n_test: 8", f"  n_test: 8\n  extra_train: {extra}")
    _, message = load_error(tmp_path, text)
    assert key in message and says in message, message


def test_extra_families_load(tmp_path: Path) -> None:
    text = CAMPAIGN_YAML.replace("  n_test: 8", "  n_test: 8\n  extra_train: {surface: 6}")
    campaign, _ = load_campaign(write(tmp_path, text))
    assert campaign.data.extra_train == {"surface": 6}
