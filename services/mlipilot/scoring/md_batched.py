"""MD stability, batched: all replicas of a candidate advance together, one MACE call per step.

The physics, failure tests and records are those of the ASE reference loop (md_stability.py):
the same Langevin and velocity Verlet updates, written out for arrays of many replicas, and each
replica draws its noise from its own seeded generator in the order ASE draws it, so in float64
a replica follows its ASE trajectory to round-off. What a step saves against that loop:

- one model call for the whole batch, on a graph whose fixed parts are built once;
- no stress or virials (the cell is fixed);
- a Verlet neighbour list: pairs within r_max + skin, searched again for a replica only when
  one of its atoms has moved more than skin/2 since; each step keeps the pairs inside r_max, so
  the model sees exactly the graph a fresh neighbour search would give;
- float32 model evaluation when the spec asks for it (``md.precision``); positions, momenta and
  energies are integrated and tested in float64 either way. In float32 each interaction's radial
  MLP, a function of the edge length alone, is read from a cubic Hermite table built once per
  model in float64 (its error is far below float32's rounding) instead of being evaluated per
  edge and step: about a third of the model's time on CPU.

A replica that fails is recorded with its time of failure and leaves the batch; the rest go on.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from ase import units
from mace.data.neighborhood import get_neighborhood

from mlipilot.errors import MlipilotError
from mlipilot.process_globals import GLOBALS_LOCK
from mlipilot.scoring.md_stability import (
    ReplicaJob,
    ReplicaMonitor,
    ReplicaOutcome,
    initial_state,
)
from mlipilot.scoring.model_file import load_model
from mlipilot.scoring.spec import MDSettings, Precision

NEIGHBOUR_SKIN_A = 1.0  # a replica's pairs are searched again once an atom moved skin/2
# On CPU, time per replica-step is lowest at 128-512 atoms per model call and rises beyond
# (cache): measured with 16-channel, 2-interaction models on 32-atom Cu, 1 and 2 threads.
CPU_MAX_BATCH_ATOMS = 256
GPU_MEMORY_FRACTION = 0.5  # of the free device memory, for one batch's activations and graph

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Radial tables: nodes on [RADIAL_TABLE_MIN_A, r_max]. The cubic Hermite error, ~h^4 f(4) / 384,
# stays below 1e-9 relative for MACE's radial bases at 2048 nodes. Shorter edges (two atoms
# within 1e-3 Å, a collapse the min-distance test fails anyway) read the first node.
RADIAL_TABLE_NODES = 2048
RADIAL_TABLE_MIN_A = 1e-3
_TABULATED_INTERACTIONS = ("RealAgnosticInteractionBlock", "RealAgnosticResidualInteractionBlock")


class _LengthsAsEdgeFeatures(torch.nn.Module):
    """Stands in for the radial embedding: the interactions get the edge lengths themselves
    (their radial tables take it from there) and the cutoff exactly as the original gives it."""

    def __init__(self, radial: torch.nn.Module) -> None:
        super().__init__()
        self.radial = radial

    def forward(self, edge_lengths, node_attrs, edge_index, atomic_numbers):
        _, cutoff = self.radial(edge_lengths, node_attrs, edge_index, atomic_numbers)
        return edge_lengths, cutoff


class _RadialTable(torch.nn.Module):
    """One interaction's radial MLP of the embedded edge length, as a cubic Hermite table.

    Each interval keeps its polynomial's coefficients, computed in float64 from the values and
    exact derivatives at its ends, so float32 evaluation loses nothing to cancellation; forces
    need only the first derivative, handed to autograd directly.
    """

    def __init__(self, mlp: torch.nn.Module, radial: torch.nn.Module, r_max: float) -> None:
        super().__init__()
        r = torch.linspace(RADIAL_TABLE_MIN_A, r_max, RADIAL_TABLE_NODES, dtype=torch.float64)
        r = r.unsqueeze(-1)
        with fwAD.dual_level():  # values and exact derivatives d/dr at the nodes, float64
            feats, _ = radial(fwAD.make_dual(r, torch.ones_like(r)), None, None, None)
            values, slopes = fwAD.unpack_dual(mlp(feats))
        self.step = float(r[1, 0] - r[0, 0])
        y0, y1 = values[:-1].detach(), values[1:].detach()
        m = slopes.detach() * self.step  # d/dt, t in [0, 1] across an interval
        m0, m1 = m[:-1], m[1:]
        a2 = 3 * (y1 - y0) - 2 * m0 - m1
        a3 = 2 * (y0 - y1) + m0 + m1
        self.register_buffer("coeffs", torch.stack([y0, m0, a2, a3], dim=1))  # [n-1, 4, out]

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        x = ((lengths[:, 0] - RADIAL_TABLE_MIN_A) / self.step).clamp(0, RADIAL_TABLE_NODES - 1)
        k = x.detach().floor().clamp(max=RADIAL_TABLE_NODES - 2).long()
        t = (x - k).unsqueeze(-1)
        with torch.no_grad():
            tt = t.detach()
            a0, a1, a2, a3 = self.coeffs[k].unbind(1)
            value = a0 + tt * (a1 + tt * (a2 + tt * a3))
            slope = a1 + tt * (2 * a2 + 3 * tt * a3)
        return value + (t - tt) * slope  # the value, with d/dt = slope for the forces


def tabulate_radial(model: torch.nn.Module) -> bool:
    """Replace the model's per-edge radial MLPs by tables, where they depend on the length alone.

    The model must be in float64. Left as it is (False) for a radial embedding that also depends
    on the species (distance transforms), or interactions that use the radial features elsewhere.
    """
    radial = model.radial_embedding
    if hasattr(radial, "distance_transform") or any(
        type(i).__name__ not in _TABULATED_INTERACTIONS for i in model.interactions
    ):
        return False
    for interaction in model.interactions:
        interaction.conv_tp_weights = _RadialTable(
            interaction.conv_tp_weights, radial, float(model.r_max)
        )
    model.radial_embedding = _LengthsAsEdgeFeatures(radial)
    return True


def batch_cap_atoms(free_bytes: int, bytes_per_atom: float, fraction: float) -> int:
    """How many atoms one batch may hold: ``fraction`` of the free memory at the probed cost."""
    if bytes_per_atom <= 0:
        raise ValueError(f"bytes_per_atom must be > 0, got {bytes_per_atom}")
    return max(1, int(fraction * free_bytes / bytes_per_atom))


def split_by_atoms(sizes: list[int], cap: int) -> list[list[int]]:
    """Consecutive groups of indices whose sizes add up to at most ``cap`` (one at least)."""
    groups: list[list[int]] = []
    total = 0
    for i, n in enumerate(sizes):
        if not groups or total + n > cap:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += n
    return groups


class BatchedMACE:
    """A MACE model evaluated on many systems at once: energies, forces, closest pairs."""

    def __init__(self, model: torch.nn.Module, device: str, precision: Precision) -> None:
        self.device = torch.device(device)
        self.dtype = _DTYPES[precision]
        for param in model.parameters():
            param.requires_grad_(False)  # forces need d(energy)/d(positions) only
        model = model.to(torch.float64).eval()
        self.tabulated = precision == "float32" and tabulate_radial(model)
        self.model = model.to(device=self.device, dtype=self.dtype)
        self.r_max = float(model.r_max)
        self.z_index = {int(z): i for i, z in enumerate(model.atomic_numbers)}
        heads = list(getattr(model, "heads", None) or ["Default"])
        named = [i for i, h in enumerate(heads) if h.lower() == "default"]
        if len(heads) > 1 and not named:
            raise MlipilotError(f"MACE model has heads {heads} and none named 'default'")
        self.head = named[0] if named else 0  # as MACECalculator picks it

    @classmethod
    def load(cls, model_path: Path, device: str, precision: Precision) -> BatchedMACE:
        return cls(load_model(model_path), device, precision)

    def node_attrs(self, numbers: np.ndarray) -> torch.Tensor:
        try:
            idx = torch.tensor([self.z_index[int(z)] for z in numbers], dtype=torch.long)
        except KeyError as exc:
            raise MlipilotError(
                f"MD start frame has element Z={exc.args[0]}; the model knows {list(self.z_index)}"
            ) from None
        one_hot = torch.nn.functional.one_hot(idx, num_classes=len(self.z_index))
        return one_hot.to(device=self.device, dtype=self.dtype)

    def evaluate(
        self, positions: np.ndarray, graph: _Graph
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Energy per system, forces per atom, closest pair per system (float64, numpy)."""
        pos = torch.from_numpy(positions).to(self.device)
        with torch.no_grad():
            senders, receivers = graph.pairs
            lengths = torch.linalg.vector_norm(pos[receivers] - pos[senders] + graph.shifts, dim=1)
            keep = lengths < self.r_max
            edge_index, shifts, lengths = graph.pairs[:, keep], graph.shifts[keep], lengths[keep]
            # A system without a pair inside r_max has its closest one at least r_max away.
            closest = torch.full((graph.n_systems,), self.r_max, dtype=lengths.dtype)
            closest = closest.to(self.device).scatter_reduce(
                0, graph.system_of_atom[edge_index[0]], lengths, "amin"
            )
        data = {
            "positions": pos.to(self.dtype).requires_grad_(True),
            "edge_index": edge_index,
            "shifts": shifts.to(self.dtype),
            "node_attrs": graph.node_attrs,
            "batch": graph.system_of_atom,
            "ptr": graph.ptr,
            "head": graph.head,
            "cell": graph.cell,
        }
        with GLOBALS_LOCK:  # e3nn's tracing elsewhere patches every forward: process_globals
            out = self.model(data, compute_stress=False, compute_virials=False, training=False)
        return (
            out["energy"].detach().to("cpu", torch.float64).numpy(),
            out["forces"].detach().to("cpu", torch.float64).numpy(),
            closest.to("cpu", torch.float64).numpy(),
        )

    def probe_bytes_per_atom(self, replica: _Replica) -> float:
        """Peak device memory of one replica's evaluation, per atom (CUDA only)."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self.evaluate(replica.pos, _Graph.of([replica], self))
        peak = torch.cuda.max_memory_allocated(self.device)
        return max(peak - before, 1) / len(replica.pos)

    def max_batch_atoms(self, replica: _Replica) -> int:
        if self.device.type != "cuda":
            return CPU_MAX_BATCH_ATOMS
        free, _ = torch.cuda.mem_get_info(self.device)
        bytes_per_atom = self.probe_bytes_per_atom(replica)
        return batch_cap_atoms(free, bytes_per_atom, GPU_MEMORY_FRACTION)


class _Replica:
    """One replica's state between batches, and its Verlet list of candidate pairs."""

    def __init__(self, job: ReplicaJob, monitor: ReplicaMonitor | None = None) -> None:
        atoms, self.rng = initial_state(job)
        self.job = job
        self._monitor = monitor
        self.numbers = atoms.numbers.copy()
        self.masses = atoms.get_masses()[:, None]
        self.pos = atoms.positions.copy()
        self.mom = atoms.get_momenta()
        self.dof = atoms.get_number_of_degrees_of_freedom()
        self.cell, self.pbc = np.array(atoms.cell), tuple(bool(p) for p in atoms.pbc)
        self.kT = units.kB * job.temperature_K
        self.pairs = np.zeros((2, 0), dtype=np.int64)
        self.shifts = np.zeros((0, 3))
        self.built_at = np.full_like(self.pos, np.inf)

    @property
    def monitor(self) -> ReplicaMonitor:
        if self._monitor is None:
            raise RuntimeError("a probe replica has no monitor")
        return self._monitor

    def needs_pairs(self) -> bool:
        if not np.isfinite(self.pos).all():
            return False  # blown up: this step's tests fail it, no search can help
        moved = np.sqrt(((self.pos - self.built_at) ** 2).sum(axis=1)).max()
        return not moved <= NEIGHBOUR_SKIN_A / 2  # inf before the first search

    def search_pairs(self, r_max: float) -> None:
        edge_index, shifts, _, _ = get_neighborhood(
            self.pos, r_max + NEIGHBOUR_SKIN_A, self.pbc, self.cell.copy()
        )
        self.pairs, self.shifts = edge_index.astype(np.int64), shifts
        self.built_at = self.pos.copy()

    def kinetic_energy(self) -> float:
        return 0.5 * float(np.vdot(self.mom, self.mom / self.masses))  # as ase.Atoms computes it


@dataclass
class _Graph:
    """What the model sees of a batch besides positions; the pairs change when searched again."""

    pairs: torch.Tensor  # [2, n_pairs] candidate pairs, batch-wide atom indices
    shifts: torch.Tensor  # [n_pairs, 3] float64 periodic image offsets (fixed cell)
    node_attrs: torch.Tensor
    system_of_atom: torch.Tensor
    ptr: torch.Tensor
    head: torch.Tensor
    cell: torch.Tensor
    n_systems: int

    @classmethod
    def of(cls, replicas: list[_Replica], model: BatchedMACE) -> _Graph:
        dev = model.device
        sizes = [len(r.pos) for r in replicas]
        ptr = np.concatenate([[0], np.cumsum(sizes)])
        graph = cls(
            pairs=torch.zeros((2, 0), dtype=torch.long, device=dev),
            shifts=torch.zeros((0, 3), dtype=torch.float64, device=dev),
            node_attrs=model.node_attrs(np.concatenate([r.numbers for r in replicas])),
            system_of_atom=torch.repeat_interleave(
                torch.arange(len(sizes)), torch.tensor(sizes)
            ).to(dev),
            ptr=torch.from_numpy(ptr).to(dev),
            head=torch.full((len(sizes),), model.head, dtype=torch.long, device=dev),
            cell=torch.from_numpy(np.concatenate([r.cell for r in replicas])).to(dev, model.dtype),
            n_systems=len(sizes),
        )
        graph.refresh_pairs(replicas, ptr, r_max=model.r_max, force=True)
        return graph

    def refresh_pairs(
        self, replicas: list[_Replica], ptr: np.ndarray, r_max: float, force: bool = False
    ) -> None:
        stale = [r for r in replicas if r.needs_pairs()]
        for r in stale:
            r.search_pairs(r_max)
        if stale or force:
            dev = self.pairs.device
            pairs = np.concatenate(
                [r.pairs + off for r, off in zip(replicas, ptr, strict=False)], 1
            )
            self.pairs = torch.from_numpy(pairs).to(dev)
            self.shifts = torch.from_numpy(np.concatenate([r.shifts for r in replicas])).to(dev)


class _Batch:
    """The active replicas, concatenated: replica k owns atoms ptr[k]:ptr[k+1]."""

    def __init__(self, replicas: list[_Replica], model: BatchedMACE, settings: MDSettings) -> None:
        self.replicas, self.model = replicas, model
        self.ptr = np.concatenate([[0], np.cumsum([len(r.pos) for r in replicas])])
        self.pos = np.concatenate([r.pos for r in replicas])
        self.mom = np.concatenate([r.mom for r in replicas])
        self.masses = np.concatenate([r.masses for r in replicas])
        self.graph = _Graph.of(replicas, model)
        # ase.md.langevin.Langevin.updatevars, with each atom's replica temperature.
        dt, fr = settings.timestep_fs * units.fs, settings.friction_per_fs / units.fs
        kT = np.concatenate([np.full((len(r.pos), 1), r.kT) for r in replicas])
        sigma = np.sqrt(2 * kT * fr / self.masses)
        self.dt = dt
        self.c1 = dt / 2.0 - dt * dt * fr / 8.0
        self.c2 = dt * fr / 2 - dt * dt * fr * fr / 8.0
        self.c3 = np.sqrt(dt) * sigma / 2.0 - dt**1.5 * fr * sigma / 8.0
        self.c5 = dt**1.5 * sigma / (2 * np.sqrt(3))
        self.c4 = fr / 2.0 * self.c5
        self.energy = np.full(len(replicas), math.nan)
        self.forces = np.full_like(self.pos, math.nan)
        self.closest = np.full(len(replicas), math.nan)

    def slices(self) -> Iterator[tuple[_Replica, slice]]:
        for k, r in enumerate(self.replicas):
            yield r, slice(self.ptr[k], self.ptr[k + 1])

    def compute_forces(self) -> None:
        """Energies, forces and closest pairs at the current positions, for every replica."""
        for r, sl in self.slices():
            r.pos = self.pos[sl]
        self.graph.refresh_pairs(self.replicas, self.ptr, self.model.r_max)
        try:
            self.energy, self.forces, self.closest = self.model.evaluate(self.pos, self.graph)
        except Exception:
            self._compute_one_by_one()

    def _compute_one_by_one(self) -> None:
        """The batch call raised: a blown-up replica's crash is its verdict, not the others'."""
        for k, (r, sl) in enumerate(self.slices()):
            try:
                e, f, c = self.model.evaluate(self.pos[sl], _Graph.of([r], self.model))
                self.energy[k], self.forces[sl], self.closest[k] = e[0], f, c[0]
            except Exception:
                if np.isfinite(self.pos[sl]).all() and np.isfinite(self.mom[sl]).all():
                    raise
                self.energy[k], self.forces[sl], self.closest[k] = math.nan, math.nan, math.nan

    def langevin_step(self) -> None:
        """ase.md.langevin.Langevin.step (fixcm=False) for every replica at once."""
        m = self.masses
        v = self.mom / m
        noise = [(r.rng.standard_normal(size=r.pos.shape), r.rng.standard_normal(size=r.pos.shape))
                 for r in self.replicas]  # fmt: skip
        xi = np.concatenate([n[0] for n in noise])
        eta = np.concatenate([n[1] for n in noise])
        rnd_pos = self.c5 * eta
        rnd_vel = self.c3 * xi - self.c4 * eta
        v += self.c1 * self.forces / m - self.c2 * v + rnd_vel
        x = self.pos
        self.pos = x + self.dt * v + rnd_pos
        v = (self.pos - x - rnd_pos) / self.dt
        self.compute_forces()
        v += self.c1 * self.forces / m - self.c2 * v + rnd_vel
        self.mom = v * m

    def verlet_step(self) -> None:
        """ase.md.verlet.VelocityVerlet.step for every replica at once."""
        p = self.mom + 0.5 * self.dt * self.forces
        self.pos = self.pos + self.dt * p / self.masses
        self.mom = p
        self.compute_forces()
        self.mom = self.mom + 0.5 * self.dt * self.forces

    def observe(self, step: int) -> int:
        """Test every replica's state after ``step``; return the steps done, for progress."""
        done = 0
        for k, (r, sl) in enumerate(self.slices()):
            r.pos, r.mom = self.pos[sl], self.mom[sl]
            kinetic = r.kinetic_energy()
            finite = bool(
                np.isfinite(r.pos).all()
                and np.isfinite(r.mom).all()
                and np.isfinite(self.forces[sl]).all()
                and math.isfinite(self.energy[k])
            )
            done += r.monitor.observe(
                step,
                temperature_K=2 * kinetic / (r.dof * units.kB),
                potential_eV=float(self.energy[k]),
                kinetic_eV=kinetic,
                min_distance_A=float(self.closest[k]),
                finite=finite,
                positions=r.pos,
            )
        return done

    def without_finished(self, settings: MDSettings) -> _Batch | None:
        left = [r for r in self.replicas if not r.monitor.done]
        if len(left) == len(self.replicas):
            return self
        if not left:
            return None
        rest = _Batch(left, self.model, settings)
        keep = np.array([not r.monitor.done for r in self.replicas])
        rest.energy, rest.closest = self.energy[keep], self.closest[keep]
        rest.forces = np.concatenate(
            [self.forces[sl] for r, sl in self.slices() if not r.monitor.done]
        )
        return rest


def _run_batch(
    model: BatchedMACE,
    replicas: list[_Replica],
    settings: MDSettings,
    on_steps: Callable[[int], None],
) -> None:
    batch: _Batch | None = _Batch(replicas, model, settings)
    step = 0
    batch.compute_forces()
    while batch is not None:
        if step > 0:
            (batch.langevin_step if step <= settings.nvt_steps else batch.verlet_step)()
        done = batch.observe(step)
        if done:
            on_steps(done)  # may raise to stop the evaluation
        batch = batch.without_finished(settings)
        step += 1


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_replicas_batched(
    model_path: Path,
    jobs: list[ReplicaJob],
    settings: MDSettings,
    on_steps: Callable[[int], None],
    *,
    device: str = "cpu",
    max_batch_atoms: int | None = None,
) -> list[ReplicaOutcome]:
    """Run the replicas in batches of at most ``max_batch_atoms`` (default: by device memory)."""
    if not jobs:
        return []
    model = BatchedMACE.load(model_path, device, settings.precision)
    cap = max_batch_atoms or model.max_batch_atoms(_Replica(jobs[0]))
    outcomes: list[ReplicaOutcome] = []
    for group in split_by_atoms([len(job.frame) for job in jobs], cap):
        with contextlib.ExitStack() as files:
            replicas = []
            for job in (jobs[i] for i in group):
                trace = files.enter_context(job.trace_path.open("w", newline=""))
                monitor = ReplicaMonitor(job, settings, len(job.frame), trace)
                replicas.append(_Replica(job, monitor))
            _run_batch(model, replicas, settings, on_steps)
        outcomes.extend(r.monitor.outcome() for r in replicas)
    return outcomes
