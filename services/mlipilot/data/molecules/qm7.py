"""The QM7-like molecular data set: sample, label (resumable fan-out), split by molecule.

``ensure_qm7`` opens the data set at ``out`` if its manifest matches the request, else builds
it, reusing every configuration and label already on disk (see label_store). Splits are by
molecule: all configurations of a molecule go to the same split, so the test error measures
transfer to unseen molecules rather than to nearby geometries of seen ones.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from mlipilot.data.dataset import (
    MANIFEST_NAME,
    Dataset,
    DatasetManifest,
    SplitInfo,
    file_sha256,
    open_dataset,
    read_manifest,
    write_manifest,
)
from mlipilot.data.extxyz import write_extxyz
from mlipilot.data.molecules.fanout import Backend, run_tasks
from mlipilot.data.molecules.label_store import ConfigStore, Failure, LabelStore
from mlipilot.data.molecules.levels import Level, get_level, level_slug
from mlipilot.data.molecules.molecule_list import SHIPPED_LIST, Molecule, load_molecule_list
from mlipilot.data.molecules.sampling import SamplingSettings
from mlipilot.data.molecules.shipped import find_shipped, settings, unpack
from mlipilot.data.molecules.tasks import (
    LabelJob,
    LabelOutcome,
    SampleJob,
    SampleOutcome,
    label_task,
    sample_task,
)
from mlipilot.errors import MlipilotError

GENERATOR = "mlipilot.data.molecules.qm7 v1"
FAILURES_NAME = "failures.json"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Execution:
    """Where tasks run; never part of the data's identity."""

    backend: Backend = "serial"
    workers: int = 1
    ray_address: str | None = None


@dataclass
class BuildStats:
    labels_computed: int = 0
    labels_reused: int = 0
    label_seconds: list[float] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


@dataclass(frozen=True)
class Qm7Result:
    dataset: Dataset
    stats: BuildStats  # empty when the data set was already complete on disk


def qm7_params(
    *,
    molecules: int,
    level: Level,
    configs_per_molecule: int,
    test_fraction: float,
    molecule_list: Path,
    sampling: SamplingSettings,
) -> dict[str, Any]:
    """Everything besides the seed that determines the data (recorded in the manifest)."""
    return {
        "molecules": molecules,
        "level": level.name,
        "level_description": level.description,
        "level_token": level.token,
        "configs_per_molecule": configs_per_molecule,
        "test_fraction": test_fraction,
        "molecule_list": molecule_list.name,
        "molecule_list_sha256": file_sha256(molecule_list),
        "sampling": sampling.as_params(),
    }


def ensure_qm7(
    out: Path,
    *,
    molecules: int,
    level: str | Level,
    configs_per_molecule: int = 4,
    seed: int = 0,
    test_fraction: float = 0.2,
    molecule_list: Path = SHIPPED_LIST,
    execution: Execution | None = None,
    progress: Callable[[str], None] | None = None,
    use_shipped: bool = True,
) -> Qm7Result:
    """Open the data set at ``out`` if it was made with these settings, else unpack the
    shipped one made with them (``shipped.py``; not with ``use_shipped=False``), else build it.
    """
    lvl = get_level(level) if isinstance(level, str) else level
    _check_request(molecules, configs_per_molecule, test_fraction)
    sampling = SamplingSettings(configs_per_molecule=configs_per_molecule)
    mols = _first_molecules(Path(molecule_list), molecules)
    params = qm7_params(
        molecules=molecules,
        level=lvl,
        configs_per_molecule=configs_per_molecule,
        test_fraction=test_fraction,
        molecule_list=Path(molecule_list),
        sampling=sampling,
    )
    out = Path(out)
    if (out / MANIFEST_NAME).exists():
        _check_same_settings(out, seed, params)
        return Qm7Result(open_dataset(out), BuildStats())
    say = progress or (lambda _msg: None)
    packed = find_shipped(GENERATOR, seed, params) if use_shipped else None
    if packed is not None:
        say(f"unpacking the shipped data set {packed.name} (no labels computed)")
        unpack(packed, out)
        return Qm7Result(open_dataset(out), BuildStats())
    out.mkdir(parents=True, exist_ok=True)
    execution = execution or Execution()
    stats = BuildStats()
    configs = sample_molecules(out, mols, seed, sampling, execution, stats, say)
    frames = label_configurations(out, lvl, configs, execution, stats, say)
    train_ids, test_ids = split_molecules([m.mol_id for m in mols], seed, test_fraction)
    splits = _write_splits(out, frames, {"train": train_ids, "test": test_ids}, lvl)
    _write_failures(out, stats.failures)
    manifest = DatasetManifest(
        name=f"qm7-{level_slug(lvl)}",
        generator=GENERATOR,
        seed=seed,
        params={**params, "failures_file": FAILURES_NAME, "n_failures": len(stats.failures)},
        splits=splits,
    )
    write_manifest(out, manifest)  # last: a manifest on disk means the split files are whole
    return Qm7Result(open_dataset(out), stats)


def sample_molecules(
    out: Path,
    mols: Sequence[Molecule],
    seed: int,
    sampling: SamplingSettings,
    execution: Execution,
    stats: BuildStats,
    say: Callable[[str], None],
) -> list[Atoms]:
    """Configurations of every molecule, sampled once and kept in ``out/configs``."""
    store = ConfigStore(out)
    keys = {m.mol_id: _config_key(m, seed, sampling) for m in mols}
    have = {m.mol_id: store.load(m.mol_id, keys[m.mol_id]) for m in mols}
    todo = [m for m in mols if have[m.mol_id] is None]
    if todo:
        say(f"sampling {len(todo)} molecules ({len(mols) - len(todo)} already on disk)")

    def keep(i: int, outcome: SampleOutcome) -> None:
        mol = todo[i]
        if outcome.frames is None:
            stats.failures.append(
                Failure(mol.mol_id, mol.mol_id, "sampling", "sampling_error", str(outcome.error))
            )
            return
        store.save(mol.mol_id, keys[mol.mol_id], outcome.frames)
        # Label what is on disk, so a resumed job labels exactly the same geometries.
        have[mol.mol_id] = store.load(mol.mol_id, keys[mol.mol_id])

    jobs = [SampleJob(m, seed, sampling) for m in todo]
    run_tasks(sample_task, jobs, keep, **_exec_kwargs(execution))
    return [a for m in mols for a in (have[m.mol_id] or [])]


def label_configurations(
    out: Path,
    level: Level,
    configs: Sequence[Atoms],
    execution: Execution,
    stats: BuildStats,
    say: Callable[[str], None] = lambda _msg: None,
) -> list[Atoms]:
    """Labelled frames for ``configs``; each new label or failure is on disk once it exists."""
    store = LabelStore(out, level)
    frames: dict[int, Atoms] = {}
    todo: list[int] = []
    for i, atoms in enumerate(configs):
        if (frame := store.load_label(atoms)) is not None:
            frames[i] = frame
        elif (failure := store.load_failure(atoms)) is not None:
            stats.failures.append(failure)
        else:
            todo.append(i)
    stats.labels_reused += len(frames)
    say(f"labelling {len(todo)} configurations at {level.name} ({len(frames)} already on disk)")

    def keep(j: int, outcome: LabelOutcome) -> None:
        atoms = configs[todo[j]]
        stats.labels_computed += 1
        stats.label_seconds.append(outcome.seconds)
        if outcome.energy is None or outcome.forces is None:
            failure = store.save_failure(
                atoms, str(outcome.failure_kind), str(outcome.failure_reason)
            )
            stats.failures.append(failure)
            say(f"{atoms.info['config_id']}: skipped: {failure.reason}")
            return
        frames[todo[j]] = store.save_label(atoms, outcome.energy, outcome.forces)

    jobs = [LabelJob(level, configs[i]) for i in todo]
    run_tasks(label_task, jobs, keep, **_exec_kwargs(execution))
    return [frames[i] for i in sorted(frames)]


def split_molecules(
    mol_ids: Sequence[str], seed: int, test_fraction: float
) -> tuple[list[str], list[str]]:
    """Disjoint train and test molecule ids, a seeded shuffle; at least one of each."""
    if len(mol_ids) < 2:
        raise MlipilotError("--molecules: need at least 2 molecules to split train from test")
    n_test = min(len(mol_ids) - 1, max(1, round(test_fraction * len(mol_ids))))
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(mol_ids))
    test = sorted(mol_ids[i] for i in order[:n_test])
    train = sorted(mol_ids[i] for i in order[n_test:])
    return train, test


def _write_splits(
    out: Path, frames: list[Atoms], members: dict[str, list[str]], level: Level
) -> dict[str, SplitInfo]:
    splits = {}
    for split in SPLITS:
        wanted = set(members[split])
        chosen = sorted(
            (a for a in frames if a.info["mol_id"] in wanted), key=lambda a: a.info["config_id"]
        )
        if not chosen:
            raise MlipilotError(
                f"{out}: no labelled configuration for the {split} split (every one failed; "
                f"see {out / 'labels'})"
            )
        path = write_extxyz(out / f"{split}.xyz", chosen)
        splits[split] = SplitInfo(
            file=path.name,
            sha256=file_sha256(path),
            n_frames=len(chosen),
            n_atoms_total=sum(len(a) for a in chosen),
            config_types=dict(sorted(Counter(a.info["config_type"] for a in chosen).items())),
            label_method=level.description,
        )
    return splits


def _write_failures(out: Path, failures: list[Failure]) -> None:
    rows = sorted((f.as_dict() for f in failures), key=lambda d: d["config_id"])
    (out / FAILURES_NAME).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


def _config_key(mol: Molecule, seed: int, sampling: SamplingSettings) -> str:
    text = json.dumps([mol.smiles, seed, sampling.as_params()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _exec_kwargs(execution: Execution) -> dict[str, Any]:
    return {
        "backend": execution.backend,
        "workers": execution.workers,
        "ray_address": execution.ray_address,
    }


def _check_request(molecules: int, configs_per_molecule: int, test_fraction: float) -> None:
    if configs_per_molecule < 1:
        raise MlipilotError(f"--configs: must be at least 1, got {configs_per_molecule}")
    if not 0.0 < test_fraction < 1.0:
        raise MlipilotError(f"--test-fraction: must be between 0 and 1, got {test_fraction}")
    if molecules < 2:
        raise MlipilotError(f"--molecules: need at least 2 to split by molecule, got {molecules}")


def _first_molecules(path: Path, n: int) -> list[Molecule]:
    mols = load_molecule_list(path)
    if n > len(mols):
        raise MlipilotError(f"--molecules: asked for {n}, but {path} lists only {len(mols)}")
    return mols[:n]


def _check_same_settings(out: Path, seed: int, params: dict[str, Any]) -> None:
    # Not the labelling software's version: a finished data set stays what it was made as (its
    # manifest says by which version), and a rebuild never reuses labels of another version.
    existing = read_manifest(out)
    have = settings(existing.generator, existing.seed, existing.params)
    wanted = settings(GENERATOR, seed, params)
    diffs = [
        f"{k}: on disk {have.get(k)!r}, asked {v!r}" for k, v in wanted.items() if have.get(k) != v
    ]
    if diffs:
        raise MlipilotError(
            f"{out / MANIFEST_NAME}: existing data set was made with different settings "
            f"({'; '.join(diffs)}); refusing to overwrite it: use another directory, or "
            f"delete {MANIFEST_NAME} to rebuild here (finished labels under labels/ are kept "
            "and reused where the geometry and level match)"
        )
