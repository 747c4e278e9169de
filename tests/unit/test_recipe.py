"""Recipe validation, patch/diff/digest, and the one Recipe -> mace_run_train flag mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlipilot.errors import MlipilotError
from mlipilot.recipe import Recipe, RecipeError, recipe_from_mapping, recipe_space
from mlipilot.training.mace_args import MODEL_NAME, to_mace_args, training_key

# -- recipe ------------------------------------------------------------------------------------


def test_defaults_validate_and_survive_a_round_trip() -> None:
    recipe = Recipe()
    assert Recipe.model_validate(recipe.model_dump()) == recipe
    assert recipe_from_mapping(None, "test") == recipe
    assert recipe_from_mapping({}, "test") == recipe


def test_recipe_error_is_a_user_error() -> None:
    assert issubclass(RecipeError, MlipilotError)


def test_unknown_key_is_named_and_known_keys_are_listed() -> None:
    with pytest.raises(RecipeError) as info:
        Recipe().patched({"r_cut": 5.0})
    message = str(info.value)
    assert "'r_cut'" in message
    assert "known keys" in message
    for key in ("r_max", "lr", "num_channels", "seed"):
        assert f"'{key}'" in message


def test_unknown_key_is_rejected_even_next_to_valid_ones() -> None:
    with pytest.raises(RecipeError, match="learning_rate"):
        Recipe().patched({"lr": 0.005, "learning_rate": 0.005})


def test_patch_must_be_a_mapping() -> None:
    with pytest.raises(RecipeError, match="expected a mapping"):
        Recipe().patched([("lr", 0.005)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "bad", "shown", "allowed"),
    [
        ("r_max", 9, "9", "2.5 <= r_max <= 7.0"),
        ("r_max", 2.0, "2.0", "2.5 <= r_max <= 7.0"),
        ("lr", 0, "0", "1e-05 <= lr <= 0.1"),
        ("num_channels", 3, "3", "4 <= num_channels <= 128"),
        ("huber_delta", 0.0, "0.0", "0.0 < huber_delta <= 1.0"),
        ("scaling", "max_scaling", "'max_scaling'", "scaling in ['rms_forces_scaling'"),
        ("e0s", "mean", "'mean'", "e0s in ['average', 'zero']"),
        ("ema", "maybe", "'maybe'", "ema in [false, true]"),
        ("seed", 1.5, "1.5", "0 <= seed <= 2147483647"),
    ],
)
def test_out_of_range_value_names_key_value_and_range(
    key: str, bad: object, shown: str, allowed: str
) -> None:
    with pytest.raises(RecipeError) as info:
        Recipe().patched({key: bad})
    message = str(info.value)
    assert f"{key} = {shown}" in message
    assert allowed in message


def test_every_bad_key_of_a_patch_is_reported() -> None:
    with pytest.raises(RecipeError) as info:
        Recipe().patched({"r_max": 9, "lr": 0})
    message = str(info.value)
    assert "r_max = 9" in message
    assert "lr = 0" in message


def test_recipe_from_mapping_names_where_it_came_from() -> None:
    with pytest.raises(RecipeError, match=r"^baseline in x\.yaml: r_max = 9"):
        recipe_from_mapping({"r_max": 9}, "baseline in x.yaml")
    with pytest.raises(RecipeError, match=r"unknown key 'rmax'"):
        recipe_from_mapping({"rmax": 5.0}, "baseline")


def test_patched_returns_a_new_recipe_and_leaves_the_original() -> None:
    original = Recipe()
    patched = original.patched({"r_max": 4.0, "ema": True})
    assert patched is not original
    assert (patched.r_max, patched.ema) == (4.0, True)
    assert (original.r_max, original.ema) == (5.0, False)
    assert original == Recipe()


def test_a_failed_patch_leaves_the_original() -> None:
    original = Recipe()
    with pytest.raises(RecipeError):
        original.patched({"r_max": 4.0, "lr": 0})
    assert original == Recipe()


def test_recipe_is_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        Recipe().r_max = 4.0  # type: ignore[misc]


def test_diff_round_trips() -> None:
    a = Recipe()
    b = a.patched({"r_max": 4.0, "scaling": "std_scaling", "stage_two": True, "num_channels": 32})
    assert a.diff(b) == {
        "r_max": 4.0,
        "scaling": "std_scaling",
        "stage_two": True,
        "num_channels": 32,
    }
    assert a.patched(a.diff(b)) == b
    assert b.patched(b.diff(a)) == a
    assert a.diff(a) == {}


def test_digest_is_stable_and_tracks_every_value() -> None:
    a = Recipe()
    assert a.digest() == Recipe().digest()
    assert a.digest() == a.patched({}).digest()
    assert len(a.digest()) == 64
    assert a.patched({"r_max": 4.0}).digest() != a.digest()
    assert a.patched({"seed": 2}).digest() != a.digest()
    # Same values reached by a different path hash the same.
    assert a.patched({"r_max": 4.0}).patched({"r_max": 5.0}).digest() == a.digest()


def test_recipe_space_covers_every_field() -> None:
    space = recipe_space()
    assert set(space) == set(Recipe.model_fields)
    for key, domain in space.items():
        assert key in domain
    assert space["r_max"] == "2.5 <= r_max <= 7.0 (float)"
    assert space["num_channels"] == "4 <= num_channels <= 128 (int)"
    assert space["ema"] == "ema in [false, true]"
    assert space["default_dtype"] == "default_dtype in ['float32', 'float64']"


# -- recipe -> mace_run_train flags ------------------------------------------------------------


def _flags(recipe: Recipe, *, epochs: int = 7, atomic_numbers: tuple[int, ...] = (29, 29)):
    return to_mace_args(
        recipe,
        train_file=Path("/data/train.extxyz"),
        work_dir=Path("/runs/c1/mace"),
        epochs=epochs,
        atomic_numbers=atomic_numbers,
    )


def _as_dict(flags: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for flag in flags:
        assert flag.startswith("--"), flag
        key, sep, value = flag[2:].partition("=")
        assert key not in out, f"flag {key} given twice"
        out[key] = value if sep else None
    return out


def test_default_recipe_flags_snapshot() -> None:
    flags = _flags(Recipe())
    assert flags == [
        f"--name={MODEL_NAME}",
        "--work_dir=/runs/c1/mace",
        "--train_file=/data/train.extxyz",
        "--valid_fraction=0.1",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        "--stress_key=REF_stress",
        "--model=MACE",
        "--E0s=average",
        "--scaling=rms_forces_scaling",
        "--loss=weighted",
        "--energy_weight=1.0",
        "--forces_weight=100.0",
        "--lr=0.01",
        "--scheduler=ReduceLROnPlateau",
        "--scheduler_patience=5",
        "--lr_factor=0.8",
        "--num_channels=16",
        "--max_L=0",
        "--correlation=3",
        "--num_interactions=2",
        "--r_max=5.0",
        "--num_radial_basis=8",
        "--batch_size=5",
        "--valid_batch_size=8",
        "--default_dtype=float64",
        "--seed=1",
        "--max_num_epochs=7",
        "--patience=8",
        "--eval_interval=1",
        "--device=cpu",
        "--num_workers=0",
        "--error_table=PerAtomMAE",
    ]


def test_recipe_values_reach_their_flags() -> None:
    recipe = Recipe().patched(
        {"r_max": 4.5, "num_channels": 32, "max_L": 1, "lr": 0.005, "batch_size": 16}
    )
    flags = _as_dict(_flags(recipe, epochs=20))
    assert flags["r_max"] == "4.5"
    assert flags["num_channels"] == "32"
    assert flags["max_L"] == "1"
    assert flags["lr"] == "0.005"
    assert flags["batch_size"] == "16"
    assert flags["valid_batch_size"] == "16"
    assert flags["max_num_epochs"] == "20"
    # Early stopping can never fire inside the budget.
    assert int(flags["patience"] or 0) > 20


def test_zero_e0s_lists_each_element_once() -> None:
    flags = _as_dict(_flags(Recipe().patched({"e0s": "zero"}), atomic_numbers=(29, 29)))
    assert flags["E0s"] == "{29: 0.0}"
    flags = _as_dict(_flags(Recipe().patched({"e0s": "zero"}), atomic_numbers=(29, 1, 29, 8)))
    assert flags["E0s"] == "{1: 0.0, 8: 0.0, 29: 0.0}"


@pytest.mark.parametrize(
    ("fraction", "epochs", "start"),
    [
        (0.75, 7, 5),  # round(5.25)
        (0.5, 10, 5),
        (0.95, 4, 3),  # round(3.8) = 4, clamped to epochs - 1
        (0.1, 2, 1),  # round(0.2) = 0, clamped to 1
        (0.1, 20, 2),
    ],
)
def test_stage_two_start_is_a_clamped_fraction_of_the_budget(
    fraction: float, epochs: int, start: int
) -> None:
    recipe = Recipe().patched({"stage_two": True, "stage_two_start": fraction})
    flags = _as_dict(_flags(recipe, epochs=epochs))
    assert "stage_two" in flags
    assert flags["stage_two"] is None
    assert flags["start_stage_two"] == str(start)
    assert 1 <= int(flags["start_stage_two"] or 0) <= epochs - 1
    assert flags["stage_two_energy_weight"] == "1000.0"
    assert flags["stage_two_forces_weight"] == "100.0"
    assert flags["stage_two_lr"] == "0.001"


def test_optional_flags_appear_only_when_set() -> None:
    off = _as_dict(_flags(Recipe()))
    for key in ("ema", "ema_decay", "stage_two", "start_stage_two", "pair_repulsion"):
        assert key not in off
    on = _as_dict(_flags(Recipe().patched({"ema": True, "ema_decay": 0.995})))
    assert on["ema"] is None
    assert on["ema_decay"] == "0.995"
    assert "stage_two" not in on
    assert "pair_repulsion" not in on
    zbl = _as_dict(_flags(Recipe().patched({"pair_repulsion": True})))
    assert zbl["pair_repulsion"] is None
    assert "ema" not in zbl


@pytest.mark.parametrize(
    "patch",
    [
        {},
        {"stage_two": True},
        {"ema": True, "pair_repulsion": True, "e0s": "zero"},
        {"loss": "huber", "scaling": "no_scaling"},
    ],
)
def test_the_test_split_never_reaches_the_trainer(patch: dict[str, object]) -> None:
    flags = _flags(Recipe().patched(patch))
    assert not [f for f in flags if f.startswith("--test")]
    assert not [f for f in flags if "test" in f.split("=", 1)[0]]


def test_training_key_ignores_inert_knobs_and_sees_real_changes() -> None:
    base = Recipe()
    assert not base.stage_two
    inert = base.patched({"stage_two_start": 0.5, "stage_two_lr": 0.01})
    assert training_key(inert, 10) == training_key(base, 10)
    assert base.loss != "huber"  # huber_delta is read by the huber loss alone
    assert training_key(base.patched({"huber_delta": 0.3}), 10) == training_key(base, 10)
    huber = base.patched({"loss": "huber"})
    assert training_key(huber.patched({"huber_delta": 0.3}), 10) != training_key(huber, 10)
    assert training_key(base.patched({"lr": 0.02}), 10) != training_key(base, 10)
    assert training_key(base, 11) != training_key(base, 10)
    staged = base.patched({"stage_two": True})
    assert training_key(staged.patched({"stage_two_start": 0.5}), 10) != training_key(staged, 10)
    # The stress weights are read by loss=stress alone (stage two's by its stage two alone).
    assert training_key(base.patched({"stress_weight": 5.0}), 10) == training_key(base, 10)
    stress = base.patched({"loss": "stress"})
    assert training_key(stress.patched({"stress_weight": 5.0}), 10) != training_key(stress, 10)
    assert training_key(stress.patched({"stage_two_stress_weight": 5.0}), 10) == training_key(
        stress, 10
    )
    staged = stress.patched({"stage_two": True})
    assert training_key(staged.patched({"stage_two_stress_weight": 5.0}), 10) != training_key(
        staged, 10
    )


def test_a_stress_loss_passes_its_weights_to_mace() -> None:
    flags = _as_dict(_flags(Recipe().patched({"loss": "stress", "stress_weight": 250.0})))
    assert flags["loss"] == "stress"
    assert flags["stress_weight"] == "250.0"
    assert "stage_two_stress_weight" not in flags
    staged = Recipe().patched(
        {"loss": "stress", "stage_two": True, "stage_two_stress_weight": 40.0}
    )
    flags = _as_dict(_flags(staged, epochs=10))
    assert flags["stage_two_stress_weight"] == "40.0"
    for loss in ("weighted", "huber"):  # huber keeps mace's own stress weight, as before
        flags = _as_dict(_flags(Recipe().patched({"loss": loss, "stage_two": True})))
        assert "stress_weight" not in flags
        assert "stage_two_stress_weight" not in flags


def test_a_stress_loss_on_data_without_stress_is_refused() -> None:
    from mlipilot.training.mace_args import stress_fits

    stress = Recipe().patched({"loss": "stress"})
    assert stress_fits(stress, True) is None
    assert stress_fits(Recipe(), False) is None
    why = stress_fits(stress, False)
    assert why is not None
    assert "loss=stress" in why and "REF_stress" in why and "loss=weighted" in why


def test_stage_two_with_forces_only_is_refused_before_training() -> None:
    with pytest.raises(RecipeError, match="stage_two cannot be combined with loss=forces_only"):
        Recipe().patched({"stage_two": True, "loss": "forces_only"})
    # Each alone is fine.
    assert Recipe().patched({"stage_two": True}).stage_two
    assert Recipe().patched({"loss": "forces_only"}).loss == "forces_only"


def test_the_correlation_one_capacity_mace_cannot_train_is_refused() -> None:
    with pytest.raises(RecipeError, match="correlation=1 with max_L>=1 and num_interactions>=2"):
        Recipe().patched({"correlation": 1, "max_L": 1, "num_interactions": 2})
    for fine in ({"correlation": 1, "max_L": 0}, {"correlation": 1, "num_interactions": 1}):
        assert Recipe().patched({**fine, "max_L": fine.get("max_L", 2)}).correlation == 1


def test_the_refused_capacity_really_fails_in_mace() -> None:
    """The refusal stands for a real mace-torch failure: when an upgrade fixes it, this test
    fails and the rule in Recipe._consistent can go."""
    import numpy as np
    import torch
    from ase.build import bulk
    from mace import data as mace_data
    from mace import modules, tools

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    table = tools.AtomicNumberTable([29])
    config = mace_data.AtomicData.from_config(
        mace_data.config_from_atoms(atoms), z_table=table, cutoff=4.0
    )
    loader = tools.torch_geometric.dataloader.DataLoader([config], batch_size=1)
    batch = next(iter(loader)).to_dict()

    def forward(correlation: int) -> None:
        from e3nn import o3  # after mace, which sets how torch.load treats e3nn's constants

        torch.manual_seed(0)
        model = modules.MACE(
            r_max=4.0,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=3,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes[
                "RealAgnosticResidualInteractionBlock"
            ],
            num_interactions=2,
            num_elements=1,
            hidden_irreps=o3.Irreps("32x0e+32x1o"),
            MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.array([-3.0]),
            avg_num_neighbors=12.0,
            atomic_numbers=[29],
            correlation=correlation,
            gate=torch.nn.functional.silu,
        ).double()
        batch64 = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
        model(batch64, training=True)

    forward(2)  # the same model with correlation 2 trains
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        forward(1)


def test_a_batch_larger_than_the_frames_mace_trains_on_is_refused(tmp_path: Path) -> None:
    from mace.data.utils import random_train_valid_split

    from mlipilot.training.mace_args import batch_fits, frames_trained_on

    for n in (2, 9, 10, 11, 48, 96, 1000):  # the same split as mace's own
        train, _ = random_train_valid_split(list(range(n)), 0.1, 0, str(tmp_path))
        assert frames_trained_on(n) == len(train), n
    assert batch_fits(Recipe(batch_size=44), 48) is None
    why = batch_fits(Recipe(batch_size=45), 48)
    assert why is not None
    assert why.startswith("batch_size 45 is larger than the 44 frames mace trains on here")
    assert why.endswith("use batch_size <= 44")
