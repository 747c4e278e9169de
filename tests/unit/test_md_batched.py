"""The batched MD engine against the ASE reference loop, on a small MACE model built here.

The model is a real (untrained) two-element MACE: what is under test is that the batched engine
computes what the reference computes, not that the potential is good. Trained models and the
scorecard's own settings are in tests/integration/test_md_engines.py.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from factories import untrained_mace

from mlipilot.model_files import read_package, write_package
from mlipilot.scoring.md_batched import (
    NEIGHBOUR_SKIN_A,
    BatchedMACE,
    _Graph,
    _RadialTable,
    _Replica,
    batch_cap_atoms,
    run_replicas_batched,
    split_by_atoms,
)
from mlipilot.scoring.md_stability import (
    ReplicaJob,
    load_md_calculator,
    run_md_stability,
    run_replica,
)
from mlipilot.scoring.ray_md import GPU_TASK_ATOMS, task_groups
from mlipilot.scoring.spec import MDSettings

F64_TOL = 1e-9  # float64 batched vs one-at-a-time: summation order only
F32_TOL = 1e-4  # float32 model evaluation vs float64, relative


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-interaction, two-element (Cu, Ag) MACE with its initial weights."""
    model = untrained_mace(
        [29, 47],
        [-3.0, -2.5],
        num_interactions=2,
        max_ell=2,
        hidden_irreps="8x0e+8x1o",
        mlp_irreps="16x0e",
        avg_num_neighbors=40.0,
        interaction_scale=0.5,
    )
    path = tmp_path_factory.mktemp("model") / "untrained.model"
    write_package(model, path)
    return path


def _cu(seed: int, silver: int = 0) -> Atoms:
    """A rattled 32-atom fcc Cu cell, with its first ``silver`` atoms made Ag."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=seed)
    atoms.numbers[:silver] = 47
    return atoms


def _cluster() -> Atoms:
    """A non-periodic 13-atom Cu cluster."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))[:13]
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    return atoms


def _settings(**overrides: object) -> MDSettings:
    values: dict[str, object] = {
        "start_frames": [0],
        "temperatures_K": [300.0],
        "seeds": [0],
        "nvt_steps": 6,
        "nve_steps": 4,
        "timestep_fs": 2.0,
        "friction_per_fs": 0.01,
        "min_distance_A": 0.5,
        "max_temperature_factor": 100.0,
        "max_energy_drift_meV_per_atom_per_ps": 1e6,
        "trace_every": 1,
        "precision": "float64",
    }
    values.update(overrides)
    return MDSettings.model_validate(values)


def _job(frame: Atoms, temp: float, seed: int, folder: Path, name: str) -> ReplicaJob:
    return ReplicaJob(0, frame, temp, seed, folder / f"{name}.csv")


def _trace(path: Path) -> np.ndarray:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return np.array([[float(v) for i, v in enumerate(r) if i != 2] for r in rows])


def test_batched_evaluation_equals_the_calculator_per_system(model_file: Path) -> None:
    systems = [_cu(1), _cu(2, silver=5), _cluster()]
    model = BatchedMACE.load(model_file, "cpu", "float64")
    replicas = [_Replica(ReplicaJob(0, s, 300.0, 0, Path("unused"))) for s in systems]
    for r, s in zip(replicas, systems, strict=True):
        r.pos = s.positions.copy()
    energy, forces, closest = model.evaluate(
        np.concatenate([s.positions for s in systems]), _Graph.of(replicas, model)
    )

    calc = load_md_calculator(model_file)
    start = 0
    for k, atoms in enumerate(systems):
        atoms = atoms.copy()
        atoms.calc = calc
        want_f = atoms.get_forces()
        n = len(atoms)
        assert energy[k] == pytest.approx(atoms.get_potential_energy(), rel=F64_TOL)
        np.testing.assert_allclose(forces[start : start + n], want_f, atol=F64_TOL)
        assert closest[k] == pytest.approx(calc.results["min_distance"], rel=F64_TOL)
        start += n
    # The Ag atoms matter: the same cell all-Cu has another energy.
    assert energy[1] != pytest.approx(energy[0], rel=1e-3)

    f32 = BatchedMACE.load(model_file, "cpu", "float32")
    e32, f32_forces, _ = f32.evaluate(
        np.concatenate([s.positions for s in systems]), _Graph.of(replicas, f32)
    )
    np.testing.assert_allclose(e32, energy, rtol=F32_TOL)
    np.testing.assert_allclose(f32_forces, forces, atol=F32_TOL * np.abs(forces).max())


def test_radial_table_matches_the_radial_mlp_and_its_derivative(model_file: Path) -> None:
    model = read_package(model_file).double()
    mlp, radial = model.interactions[1].conv_tp_weights, model.radial_embedding
    table = _RadialTable(mlp, radial, float(model.r_max))
    r = torch.linspace(0.5, float(model.r_max) - 1e-6, 997, dtype=torch.float64)[:, None]
    r.requires_grad_(True)
    want = mlp(radial(r, None, None, None)[0])
    got = table(r)
    scale = want.abs().max()
    assert (got - want).abs().max() < 1e-9 * scale
    (dwant,) = torch.autograd.grad(want.sum(), r)
    (dgot,) = torch.autograd.grad(got.sum(), r)
    assert (dgot - dwant).abs().max() < 1e-7 * dwant.abs().max()
    # Used in float32 only: float64 keeps the model's own arithmetic.
    assert BatchedMACE.load(model_file, "cpu", "float32").tabulated
    assert not BatchedMACE.load(model_file, "cpu", "float64").tabulated


def test_verlet_list_gives_the_fresh_graph_until_half_the_skin(model_file: Path) -> None:
    model = BatchedMACE.load(model_file, "cpu", "float64")
    frame = _cu(3)
    replica = _Replica(ReplicaJob(0, frame, 300.0, 0, Path("unused")))
    graph = _Graph.of([replica], model)
    calc = load_md_calculator(model_file)

    rng = np.random.default_rng(0)
    step = rng.normal(size=frame.positions.shape)
    step *= 0.49 * NEIGHBOUR_SKIN_A / np.linalg.norm(step, axis=1).max()
    moved = frame.copy()
    moved.positions += step
    replica.pos = moved.positions.copy()
    assert not replica.needs_pairs()
    pairs_before = graph.pairs.clone()
    graph.refresh_pairs([replica], np.array([0, len(frame)]), model.r_max)
    assert torch.equal(graph.pairs, pairs_before)  # no new search ...
    energy, forces, closest = model.evaluate(moved.positions, graph)
    moved.calc = calc
    assert energy[0] == pytest.approx(moved.get_potential_energy(), rel=F64_TOL)  # ... same graph
    np.testing.assert_allclose(forces, moved.get_forces(), atol=F64_TOL)
    assert closest[0] == pytest.approx(calc.results["min_distance"], rel=F64_TOL)

    replica.pos = frame.positions + step * (0.52 / 0.49)
    assert replica.needs_pairs()


def test_trajectories_follow_the_ase_loop_in_float64(model_file: Path, tmp_path: Path) -> None:
    settings = _settings()
    starts = [(_cu(4), 300.0, 0), (_cu(5, silver=3), 900.0, 7), (_cluster(), 600.0, 1)]
    ase_jobs = [_job(f, t, s, tmp_path, f"ase{i}") for i, (f, t, s) in enumerate(starts)]
    batch_jobs = [_job(f, t, s, tmp_path, f"batch{i}") for i, (f, t, s) in enumerate(starts)]
    calc = load_md_calculator(model_file)
    want = [run_replica(calc, job, settings, lambda n: None) for job in ase_jobs]
    steps: list[int] = []
    got = run_replicas_batched(model_file, batch_jobs, settings, steps.append)

    assert sum(steps) == 3 * 10
    for w, g, aj, bj in zip(want, got, ase_jobs, batch_jobs, strict=True):
        assert (g.status, g.survived_steps, g.failure_ps) == (w.status, w.survived_steps, None)
        assert g.max_temperature_K == pytest.approx(w.max_temperature_K, rel=F64_TOL)
        assert g.nve_drift_meV_per_atom_per_ps == pytest.approx(
            w.nve_drift_meV_per_atom_per_ps, rel=1e-6
        )
        # Every step: temperature, potential and total energy, closest pair.
        np.testing.assert_allclose(_trace(bj.trace_path), _trace(aj.trace_path), rtol=F64_TOL)
    assert len(_trace(batch_jobs[0].trace_path)) == 11
    # The runs are not trivially the same: the thermostat moved every replica differently.
    assert len({round(g.max_temperature_K, 3) for g in got}) == 3


def test_a_collapsed_replica_leaves_the_batch_and_the_others_go_on(
    model_file: Path, tmp_path: Path
) -> None:
    squeezed = _cu(6)
    squeezed.positions[1] = squeezed.positions[0] + [0.3, 0.0, 0.0]
    settings = _settings(min_distance_A=0.5)
    jobs = [
        _job(_cu(7), 300.0, 0, tmp_path, "ok0"),
        _job(squeezed, 300.0, 1, tmp_path, "squeezed"),
        _job(_cu(8), 600.0, 2, tmp_path, "ok1"),
    ]
    steps: list[int] = []
    got = run_replicas_batched(model_file, jobs, settings, steps.append)

    assert [o.status for o in got] == ["stable", "min_distance", "stable"]
    assert (got[1].survived_steps, got[1].failure_ps, got[1].min_distance_A) == (
        0,
        0.0,
        pytest.approx(0.3),
    )
    assert len(_trace(jobs[1].trace_path)) == 1
    assert sum(steps) == 3 * 10  # the failed replica's lost steps count as done
    # The survivors are as if they had run alone on the reference loop.
    calc = load_md_calculator(model_file)
    for job, outcome in ((jobs[0], got[0]), (jobs[2], got[2])):
        alone = run_replica(
            calc,
            _job(job.frame, job.temperature_K, job.seed, tmp_path, "x"),
            settings,
            lambda n: None,
        )
        assert outcome.max_temperature_K == pytest.approx(alone.max_temperature_K, rel=F64_TOL)
        assert len(_trace(job.trace_path)) == 11


def test_batches_capped_by_atoms_give_the_same_outcomes(model_file: Path, tmp_path: Path) -> None:
    settings = _settings(nvt_steps=4, nve_steps=2)
    frames = [_cu(10 + i) for i in range(3)]
    one = run_replicas_batched(
        model_file,
        [_job(f, 500.0, i, tmp_path, f"one{i}") for i, f in enumerate(frames)],
        settings,
        lambda n: None,
    )
    split = run_replicas_batched(
        model_file,
        [_job(f, 500.0, i, tmp_path, f"split{i}") for i, f in enumerate(frames)],
        settings,
        lambda n: None,
        max_batch_atoms=40,  # one 32-atom replica per batch
    )
    for a, b in zip(one, split, strict=True):
        assert a.status == b.status == "stable"
        assert b.max_temperature_K == pytest.approx(a.max_temperature_K, rel=F64_TOL)
        assert b.trace_file.startswith("split")


def test_nan_model_fails_every_replica_at_the_start(model_file: Path, tmp_path: Path) -> None:
    model = read_package(model_file)
    with torch.no_grad():  # NaN weights (a NaN in the configuration itself is refused)
        for param in model.parameters():
            param.fill_(math.nan)
    nan_file = tmp_path / "nan.model"
    write_package(model, nan_file)
    report = run_md_stability(nan_file, [_cu(1), _cu(2)], _settings(engine="batched"), tmp_path)

    assert [(r.status, r.survived_steps, r.failure_ps) for r in report.replicas] == [
        ("non_finite", 0, 0.0)
    ] * 2
    assert report.metrics["md_survival_fraction"] == 0.0


def test_engine_and_precision_are_spec_options() -> None:
    assert (_settings().engine, MDSettings.model_fields["precision"].default) == (
        "batched",
        "float32",
    )
    assert _settings(engine="ase").engine == "ase"
    with pytest.raises(ValueError, match="engine"):
        _settings(engine="torchsim")
    with pytest.raises(ValueError, match="precision"):
        _settings(precision="float16")


def test_batch_size_from_memory() -> None:
    assert batch_cap_atoms(80 * 2**30, 2**20, 0.5) == 40 * 2**10
    assert batch_cap_atoms(10, 2**20, 0.5) == 1  # never below one atom (one replica)
    with pytest.raises(ValueError):
        batch_cap_atoms(2**30, 0, 0.5)


def test_split_by_atoms() -> None:
    assert split_by_atoms([32, 32, 32, 31], 64) == [[0, 1], [2, 3]]
    assert split_by_atoms([32, 32, 32], 40) == [[0], [1], [2]]
    assert split_by_atoms([100, 10], 50) == [[0], [1]]  # a replica bigger than the cap: alone
    assert split_by_atoms([32] * 4, 10_000) == [[0, 1, 2, 3]]


def test_ray_task_groups() -> None:
    # CPU: one group per slot, balanced, never more groups than replicas.
    assert task_groups([32] * 32, slots=2, gpu=False) == [list(range(16)), list(range(16, 32))]
    assert task_groups([32] * 3, slots=8, gpu=False) == [[0], [1], [2]]
    assert [len(g) for g in task_groups([32] * 10, slots=4, gpu=False)] == [2, 3, 2, 3]
    # GPU: one task until the atoms ask for more.
    assert task_groups([32] * 32, slots=8, gpu=True) == [list(range(32))]
    many = [1000] * (3 * GPU_TASK_ATOMS // 1000)
    assert len(task_groups(many, slots=8, gpu=True)) == 3
    assert len(task_groups(many, slots=2, gpu=True)) == 2


needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run it on a GPU machine)"
)


@needs_cuda
def test_on_a_gpu_the_batched_engine_follows_the_cpu_reference(
    model_file: Path, tmp_path: Path
) -> None:
    """The same code on a GPU: float64 follows the CPU reference loop's trajectories, float32
    gives the same verdicts, and the batch size comes from the device's free memory."""
    settings = _settings()
    starts = [(_cu(4), 300.0, 0), (_cu(5, silver=3), 900.0, 7), (_cluster(), 600.0, 1)]
    calc = load_md_calculator(model_file)  # the reference: ASE loop, CPU, float64
    ref_jobs = [_job(f, t, s, tmp_path, f"ref{i}") for i, (f, t, s) in enumerate(starts)]
    want = [run_replica(calc, job, settings, lambda n: None) for job in ref_jobs]
    for precision, rel, atol in (("float64", 1e-7, 1e-9), ("float32", 1e-3, 1e-3)):
        jobs = [_job(f, t, s, tmp_path, f"{precision}{i}") for i, (f, t, s) in enumerate(starts)]
        got = run_replicas_batched(
            model_file,
            jobs,
            settings.model_copy(update={"precision": precision}),
            lambda n: None,
            device="cuda",
        )
        for w, g, rj, gj in zip(want, got, ref_jobs, jobs, strict=True):
            assert (g.status, g.survived_steps) == (w.status, w.survived_steps)
            assert g.max_temperature_K == pytest.approx(w.max_temperature_K, rel=rel)
            traces = _trace(gj.trace_path), _trace(rj.trace_path)
            np.testing.assert_allclose(*traces, rtol=rel, atol=atol)
    model = BatchedMACE.load(model_file, "cuda", "float32")
    cap = model.max_batch_atoms(_Replica(ref_jobs[0]))
    free, _ = torch.cuda.mem_get_info()
    assert 10_000 < cap < free  # thousands of replicas' worth on a GPU, and less than memory
