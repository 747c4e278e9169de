"""The two MD engines agree: batched (the default) and the ASE reference loop.

A really trained tiny MACE (Cu, EMT labels) is stable: both engines keep it stable with the same
thermostat statistics. The same model flipped is unstable: both flag it. The scorecard's
verdict is the same whichever engine runs its MD stage.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from factories import scaled_model

from mlipilot.config import RayResources
from mlipilot.scoring.md_stability import MDReport, ReplicaJob, run_md_stability, run_replicas_here
from mlipilot.scoring.ray_md import RayReplicaRunner
from mlipilot.scoring.scorecard import Scorecard
from mlipilot.scoring.spec import MDSettings, load_spec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

REPO = Path(__file__).resolve().parents[2]
F64_REL = 1e-6  # float64 engines: one trajectory up to summation order, over 60 steps
THERMOSTAT_REL = 0.05  # mean NVT temperature, float32 batched vs float64 ASE


def _settings(**overrides: object) -> MDSettings:
    """cu-emt.yaml's MD block, shorter."""
    spec, _ = load_spec(REPO / "scorecard" / "cu-emt.yaml")
    values = spec.md.model_dump()
    values.update({"nvt_steps": 50, "nve_steps": 10, "trace_every": 5, **overrides})
    return MDSettings.model_validate(values)


def _nvt_temperatures(report: MDReport, folder: Path) -> list[float]:
    """Per replica: the mean temperature of the trace's NVT rows after the first 10 steps."""
    means = []
    for rep in report.replicas:
        with (folder / rep.trace_file).open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["phase"] == "nvt" and int(r["step"]) > 10]
        means.append(statistics.fmean(float(r["temperature_K"]) for r in rows))
    return means


def _run(model: Path, frames: list[Atoms], folder: Path, **settings: object) -> MDReport:
    return run_md_stability(model, frames, _settings(**settings), folder)


def test_engines_agree_on_a_stable_model(
    tiny_cu_model: Path, cu_test_frames: list[Atoms], tmp_path: Path
) -> None:
    frames = cu_test_frames[:2]
    ase = _run(tiny_cu_model, frames, tmp_path / "ase", engine="ase", precision="float64")
    b64 = _run(tiny_cu_model, frames, tmp_path / "b64", engine="batched", precision="float64")
    b32 = _run(tiny_cu_model, frames, tmp_path / "b32", engine="batched", precision="float32")

    assert len(ase.replicas) == 4
    for report in (ase, b64, b32):
        assert [r.status for r in report.replicas] == ["stable"] * 4
        assert report.metrics["md_survival_fraction"] == 1.0
    # float64: the same trajectories (same noise streams, same forces).
    for a, b in zip(ase.replicas, b64.replicas, strict=True):
        assert b.max_temperature_K == pytest.approx(a.max_temperature_K, rel=F64_REL)
        assert b.min_distance_A == pytest.approx(a.min_distance_A, rel=F64_REL)
        assert b.nve_drift_meV_per_atom_per_ps == pytest.approx(
            a.nve_drift_meV_per_atom_per_ps, rel=1e-3, abs=1e-3
        )
    # float32: the same thermostat statistics, replica by replica and overall.
    t_ase = _nvt_temperatures(ase, tmp_path / "ase")
    t_b32 = _nvt_temperatures(b32, tmp_path / "b32")
    targets = [r.temperature_K for r in ase.replicas]
    for want, got, target in zip(t_ase, t_b32, targets, strict=True):
        assert got == pytest.approx(want, rel=THERMOSTAT_REL)
        assert 0.6 * target < got < 1.4 * target  # thermostatted, not merely equal
    drift_a = ase.metrics["md_max_energy_drift_meV_per_atom_per_ps"]
    drift_b = b32.metrics["md_max_energy_drift_meV_per_atom_per_ps"]
    assert abs(drift_b - drift_a) < 0.1 * _settings().max_energy_drift_meV_per_atom_per_ps


def test_engines_agree_on_an_unstable_model(
    tiny_cu_model: Path, cu_test_frames: list[Atoms], tmp_path: Path
) -> None:
    # Flipped and amplified: the learnt repulsion becomes a strong attraction.
    bad = scaled_model(tiny_cu_model, -50.0, tmp_path / "bad.model")
    frames = cu_test_frames[:2]
    ase = _run(bad, frames, tmp_path / "ase", engine="ase", precision="float64")
    b64 = _run(bad, frames, tmp_path / "b64", engine="batched", precision="float64")
    b32 = _run(bad, frames, tmp_path / "b32", engine="batched", precision="float32")

    for report in (ase, b64, b32):
        assert report.metrics["md_failed_replicas"] == 4.0
        assert report.metrics["md_survival_fraction"] < 0.5
        assert all(r.status in ("min_distance", "non_finite") for r in report.replicas)
    want = [(r.status, r.survived_steps, r.failure_ps) for r in ase.replicas]
    assert [(r.status, r.survived_steps, r.failure_ps) for r in b64.replicas] == want
    for a, b in zip(ase.replicas, b32.replicas, strict=True):
        assert abs(b.survived_steps - a.survived_steps) <= 2


def test_replicas_fail_at_their_own_step_while_the_rest_go_on(
    tiny_cu_model: Path, tmp_path: Path
) -> None:
    # Clean fcc: the 2000 K replicas come closer than 2.25 Å within the run, the 300 K ones never.
    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    cell.rattle(0.02, seed=1)
    options = {"temperatures_K": [300.0, 2000.0], "seeds": [0, 1], "min_distance_A": 2.25}
    options["max_temperature_factor"] = 10.0
    ase = _run(
        tiny_cu_model, [cell], tmp_path / "ase", engine="ase", precision="float64", **options
    )
    steps: list[int] = []
    batched = run_md_stability(
        tiny_cu_model,
        [cell],
        _settings(engine="batched", precision="float64", **options),
        tmp_path / "b64",
        lambda done, total: steps.append(done),
    )

    got = [(r.temperature_K, r.status, r.survived_steps) for r in batched.replicas]
    assert got == [(r.temperature_K, r.status, r.survived_steps) for r in ase.replicas]
    assert [s for _, s, _ in got] == ["stable", "stable", "min_distance", "min_distance"]
    assert all(0 < n < 50 for _, s, n in got if s != "stable")  # failed mid-run
    assert steps[-1] == 4 * 60  # forfeited steps complete the progress bar


def test_scorecard_verdict_is_the_same_with_either_engine(
    tiny_cu_model: Path, cu_test_frames: list[Atoms], tmp_path: Path
) -> None:
    spec, spec_hash = load_spec(REPO / "scorecard" / "cu-emt.yaml")
    assert (spec.md.engine, spec.md.precision) == ("batched", "float32")  # the shipped default
    short = {"nvt_steps": 30, "nve_steps": 10}
    quick = spec.throughput.model_copy(update={"md_steps": 5, "repeats": 1})
    bad = scaled_model(tiny_cu_model, -50.0, tmp_path / "bad.model")
    verdicts = {}
    for engine, precision in (("ase", "float64"), ("batched", "float32")):
        md = spec.md.model_copy(update={"engine": engine, "precision": precision, **short})
        judged = spec.model_copy(update={"md": md, "throughput": quick})
        card = Scorecard(judged, spec_hash, cu_test_frames, "test-hash")
        for name, model in (("good", tiny_cu_model), ("bad", bad)):
            result = card.evaluate(
                model, baseline_model_path=tiny_cu_model, out_dir=tmp_path / engine / name
            )
            verdicts[engine, name] = (
                result.feasible,
                sorted(c.metric for c in result.violated()),
                result.metrics["md_failed_replicas"],
            )
    assert verdicts["ase", "good"] == verdicts["batched", "good"]
    assert verdicts["ase", "bad"] == verdicts["batched", "bad"]
    assert "md_survival_fraction" in verdicts["ase", "bad"][1]
    assert "md_survival_fraction" not in verdicts["ase", "good"][1]


def test_ray_runner_batches_replicas_into_one_task_per_slot(
    ray_session, tiny_cu_model: Path, cu_test_frames: list[Atoms], tmp_path: Path
) -> None:
    settings = _settings(precision="float64", nvt_steps=30, nve_steps=10)
    jobs = [
        ReplicaJob(i, frame, temp, seed, tmp_path / f"r-{i}-{temp:g}-{seed}.csv")
        for i, frame in enumerate(cu_test_frames[:2])
        for temp in settings.temperatures_K
        for seed in settings.seeds
    ]
    steps: list[int] = []
    runner = RayReplicaRunner(RayResources(num_cpus=1))
    got = runner(tiny_cu_model, jobs, settings, steps.append)
    (tmp_path / "here").mkdir()
    here_jobs = [replace(j, trace_path=tmp_path / "here" / j.trace_path.name) for j in jobs]
    here = run_replicas_here(tiny_cu_model, here_jobs, settings, lambda n: None)

    assert len(got) == 4 and sum(steps) == 4 * 40
    assert steps == [2 * 40, 2 * 40]  # 2 CPUs in the test session: two tasks of two replicas
    for g, h, job in zip(got, here, jobs, strict=True):
        assert (g.start_frame, g.temperature_K, g.seed) == (
            job.frame_idx,
            job.temperature_K,
            job.seed,
        )
        assert (g.status, g.survived_steps) == (h.status, h.survived_steps)
        assert g.max_temperature_K == pytest.approx(h.max_temperature_K, rel=F64_REL)
        assert job.trace_path.is_file()
    assert np.isfinite([g.max_temperature_K for g in got]).all()


def test_a_shipping_ray_runner_needs_no_folder_shared_with_its_workers(
    ray_session,
    tiny_cu_model: Path,
    cu_test_frames: list[Atoms],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scorecard service's runner (``serve scorecard --ray-address``): its pod shares no
    folder with the Ray workers. Relative paths make that so here: a Ray worker runs in its own
    working folder, where ``model.pt`` and ``md/`` do not exist, so a task that opened the
    caller's paths would fail. The model goes out as bytes, and every trace comes back to the
    path the caller asked for, the same replicas as run here."""
    monkeypatch.chdir(tmp_path)
    Path("model.pt").write_bytes(tiny_cu_model.read_bytes())
    Path("md").mkdir()
    settings = _settings(precision="float64", nvt_steps=20, nve_steps=5)
    jobs = [
        ReplicaJob(i, frame, temp, 0, Path("md") / f"r-{i}-{temp:g}.csv")
        for i, frame in enumerate(cu_test_frames[:2])
        for temp in settings.temperatures_K
    ]
    got = RayReplicaRunner(RayResources(num_cpus=1), ship=True)(
        Path("model.pt"), jobs, settings, lambda n: None
    )
    Path("here").mkdir()
    here = run_replicas_here(
        tiny_cu_model,
        [replace(j, trace_path=Path("here") / j.trace_path.name) for j in jobs],
        settings,
        lambda n: None,
    )
    for g, h, job in zip(got, here, jobs, strict=True):
        assert (g.status, g.survived_steps) == (h.status, h.survived_steps)
        assert g.max_temperature_K == pytest.approx(h.max_temperature_K, rel=F64_REL)
        assert g.trace_file == job.trace_path.name
        rows = job.trace_path.read_text().splitlines()
        assert len(rows) == len((Path("here") / job.trace_path.name).read_text().splitlines())
    # The path-based runner, for contrast, cannot find the caller's model from a worker.
    with pytest.raises(Exception, match=r"model\.pt"):
        RayReplicaRunner(RayResources(num_cpus=1))(Path("model.pt"), jobs[:1], settings, print)
