"""Baseline MACE training program: the one file an agent edits in code mode.

Run as ``python training/program.py job.json``. It runs sandboxed: no network, no project code,
only the training split. Dependencies: torch, mace-torch (with its e3nn), ase, numpy.

The job file holds the knobs below (any other key is an error), plus ``train_file``, ``epochs``
and ``out_dir``. The program writes to ``out_dir``:
- ``model.json``: the model class and its constructor arguments, as plain JSON;
- ``weights.pt``: ``model.state_dict()`` (tensors only: the scorer loads it with weights_only);
- ``predictions.json``: energy and forces of the first training frame, for checks.
It logs one line per epoch and ends with ``key: value`` lines.
"""

import json
import math
import random
import sys
import time
import warnings
from pathlib import Path

import ase.io
import mace  # noqa: F401  (first: it sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which e3nn needs)
import numpy as np
import torch
from e3nn import o3
from mace import data, modules
from mace.tools import torch_geometric, utils

# Knobs and their defaults; job.json may set any of them.
KNOBS = {
    "e0s": "average",  # "average" (least squares over the training frames) or "zero"
    "scaling": "rms_forces_scaling",  # or "std_scaling", "no_scaling"
    "energy_weight": 1.0,
    "forces_weight": 100.0,
    "lr": 0.01,
    "scheduler_patience": 5,
    "lr_factor": 0.8,
    "num_channels": 16,
    "max_L": 0,
    "correlation": 3,
    "num_interactions": 2,
    "r_max": 5.0,
    "num_radial_basis": 8,
    "batch_size": 5,
    "default_dtype": "float64",
    "seed": 1,
    "valid_fraction": 0.1,
}
warnings.filterwarnings("ignore", message="The TorchScript type system")  # mace's, harmless
REQUIRED = ("train_file", "epochs", "out_dir")
OPTIONAL = ("device",)  # set by the sandbox, "cuda", when it bound a GPU in
ENERGY_KEY, FORCES_KEY = "REF_energy", "REF_forces"
KEYS = data.KeySpecification(info_keys={"energy": ENERGY_KEY}, arrays_keys={"forces": FORCES_KEY})


def read_job(path):
    job = json.loads(Path(path).read_text())
    unknown = sorted(set(job) - set(KNOBS) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise SystemExit(f"{path}: unknown key(s) {unknown}; known: {sorted(KNOBS)}")
    missing = [k for k in REQUIRED if k not in job]
    if missing:
        raise SystemExit(f"{path}: missing key(s) {missing}")
    return {**KNOBS, **job}


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_graphs(frames, z_table, r_max):
    configs = [data.config_from_atoms(a, key_specification=KEYS) for a in frames]
    graphs = [data.AtomicData.from_config(c, z_table=z_table, cutoff=r_max) for c in configs]
    return configs, graphs


def split(n, valid_fraction, seed):
    """Shuffled (train, valid) indices; at least one frame in each."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_valid = min(max(1, int(valid_fraction * n)), n - 1)
    return order[n_valid:], order[:n_valid]


def average_e0s(configs, z_table):
    """Least-squares energy per element: E_frame ~ sum_z count_z * E0_z."""
    counts = np.array(
        [[np.count_nonzero(c.atomic_numbers == z) for z in z_table.zs] for c in configs]
    )
    energies = np.array([c.properties["energy"] for c in configs])
    return np.linalg.lstsq(counts, energies, rcond=None)[0]


def model_config(job, z_table, e0s, avg_num_neighbors, scale):
    """Constructor arguments of ScaleShiftMACE as plain JSON values (mace_run_train's defaults)."""
    hidden = o3.Irreps.spherical_harmonics(job["max_L"]) * job["num_channels"]
    return {
        "r_max": float(job["r_max"]),
        "num_bessel": job["num_radial_basis"],
        "num_polynomial_cutoff": 5,
        "max_ell": 3,
        "interaction_cls": "RealAgnosticResidualInteractionBlock",
        "interaction_cls_first": "RealAgnosticInteractionBlock",
        "num_interactions": job["num_interactions"],
        "num_elements": len(z_table),
        "hidden_irreps": str(hidden.sort().irreps.simplify()),
        "MLP_irreps": "16x0e",
        "atomic_energies": [float(e) for e in e0s],
        "avg_num_neighbors": float(avg_num_neighbors),
        "atomic_numbers": [int(z) for z in z_table.zs],
        "correlation": job["correlation"],
        "gate": "silu",
        "radial_MLP": [64, 64, 64],
        "atomic_inter_scale": float(scale),
        "atomic_inter_shift": 0.0,
    }


def build_model(config):
    """The nn.Module described by ``config`` (names -> mace classes, strings -> irreps)."""
    kwargs = dict(config)
    for key in ("interaction_cls", "interaction_cls_first"):
        kwargs[key] = modules.interaction_classes[kwargs[key]]
    kwargs["gate"] = modules.gate_dict[kwargs["gate"]]
    for key in ("hidden_irreps", "MLP_irreps"):
        kwargs[key] = o3.Irreps(kwargs[key])
    kwargs["atomic_energies"] = np.array(kwargs["atomic_energies"])
    return modules.ScaleShiftMACE(**kwargs)


def loss_fn(out, batch, job):
    """Weighted energy (per atom) + forces mean squared error. Add terms here."""
    atoms_per_graph = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
    energy = torch.mean(torch.square((out["energy"] - batch.energy) / atoms_per_graph))
    forces = torch.mean(torch.square(out["forces"] - batch.forces))
    return job["energy_weight"] * energy + job["forces_weight"] * forces


def evaluate(model, loader, job):
    """(loss, energy MAE in meV/atom, force MAE in meV/A) over ``loader``."""
    losses, e_err, f_err = [], [], []
    device = next(model.parameters()).device
    for batch in loader:
        batch = batch.to(device)
        out = model(batch.to_dict(), training=False)
        losses.append(loss_fn(out, batch, job).item())
        n = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
        e_err.append(((out["energy"] - batch.energy) / n).abs().detach())
        f_err.append((out["forces"] - batch.forces).abs().flatten().detach())
    mae_e = torch.cat(e_err).mean().item() * 1000.0
    return float(np.mean(losses)), mae_e, torch.cat(f_err).mean().item() * 1000.0


def train(job):
    torch.set_default_dtype(getattr(torch, job["default_dtype"]))
    seed_everything(job["seed"])
    frames = ase.io.read(job["train_file"], index=":", format="extxyz")
    z_table = utils.AtomicNumberTable(sorted({int(z) for a in frames for z in a.numbers}))
    configs, graphs = load_graphs(frames, z_table, job["r_max"])
    # The sandbox says where to train: "cuda" only when it bound a GPU in. The data stays on
    # the CPU (mace's statistics below expect it there); each batch moves when it is used.
    device = torch.device(job.get("device", "cpu"))
    train_idx, valid_idx = split(len(graphs), job["valid_fraction"], job["seed"])
    if job["batch_size"] > len(train_idx):
        raise SystemExit(f"batch_size {job['batch_size']} > {len(train_idx)} training frames")
    loader = torch_geometric.dataloader.DataLoader(
        [graphs[i] for i in train_idx],
        batch_size=job["batch_size"],
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(job["seed"]),
    )
    valid_loader = torch_geometric.dataloader.DataLoader(
        [graphs[i] for i in valid_idx], batch_size=max(job["batch_size"], 8), shuffle=False
    )

    if job["e0s"] == "zero":
        e0s = np.zeros(len(z_table))
    else:
        e0s = average_e0s([configs[i] for i in train_idx], z_table)
    scale = 1.0
    if job["scaling"] != "no_scaling":
        _, scale = modules.scaling_classes[job["scaling"]](loader, e0s)
    avg_num_neighbors = modules.compute_avg_num_neighbors(loader)
    config = model_config(job, z_table, e0s, avg_num_neighbors, np.ravel(scale)[0])
    model = build_model(config).to(device)

    optimizer = torch.optim.Adam(model.parameters(), lr=job["lr"], amsgrad=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=job["lr_factor"], patience=job["scheduler_patience"]
    )
    for epoch in range(job["epochs"]):
        model.train()
        losses = []
        for batch in loader:
            batch = batch.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(batch.to_dict(), training=True), batch, job)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        valid_loss, mae_e, mae_f = evaluate(model, valid_loader, job)
        scheduler.step(valid_loss)
        train_loss = float(np.mean(losses))
        print(
            f"epoch {epoch} train_loss {train_loss:.6g} valid_energy_mae_meV_per_atom "
            f"{mae_e:.4f} valid_force_mae_meV_per_A {mae_f:.4f}",
            flush=True,
        )
        if not math.isfinite(train_loss):
            raise SystemExit(f"non-finite training loss at epoch {epoch}")
    return model.to("cpu"), config, graphs[0], (mae_e, mae_f)


def save(model, config, first_graph, job):
    out = Path(job["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    model_json = {"class": "ScaleShiftMACE", "dtype": job["default_dtype"], "kwargs": config}
    (out / "model.json").write_text(json.dumps(model_json, indent=1))
    torch.save(model.state_dict(), out / "weights.pt")
    batch = next(iter(torch_geometric.dataloader.DataLoader([first_graph], batch_size=1)))
    pred = model(batch.to_dict(), training=False)
    (out / "predictions.json").write_text(
        json.dumps(
            {
                "frame": 0,
                "energy": pred["energy"].item(),
                "forces": pred["forces"].detach().tolist(),
            }
        )
    )


def main(argv):
    if len(argv) != 2:
        raise SystemExit("usage: program.py job.json")
    start = time.monotonic()
    job = read_job(argv[1])
    model, config, first_graph, (mae_e, mae_f) = train(job)
    save(model, config, first_graph, job)
    print(f"valid_energy_mae_meV_per_atom: {mae_e:.4f}")
    print(f"valid_force_mae_meV_per_A: {mae_f:.4f}")
    print(f"parameters: {sum(p.numel() for p in model.parameters())}")
    print(f"seconds: {time.monotonic() - start:.1f}")


if __name__ == "__main__":
    main(sys.argv)
