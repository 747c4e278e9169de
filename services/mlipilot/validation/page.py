"""The validation page: static HTML (the campaign report's style, readable offline) with
matplotlib figures of the model's curves beside the reference's, drawn from the result alone."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from mlipilot.report.figures import save
from mlipilot.report.html import CSS, FigureRef, figure_html, fmt
from mlipilot.validation.result import CheckResult, Curve, Measurements, ValidationResult

PAGE_CSS = (
    CSS
    + """
tr.pass td.verdict { background: #d8f0d8; }
tr.fail td.verdict { background: #f6d6d6; }
td.note { font-size: 0.85em; color: #555; overflow-wrap: anywhere; max-width: 30em; }
"""
)
MODEL_STYLE = {"color": "tab:blue", "lw": 1.6}
REFERENCE_STYLE = {"color": "black", "lw": 1.2, "ls": "--"}


def _curves(m: Measurements, group: str) -> dict[str, Curve]:
    run = m.groups.get(group)
    return run.curves if run is not None else {}


def _xy(curve: Curve) -> tuple[list[float], list[float]]:
    nan = float("nan")
    return [nan if v is None else v for v in curve.x], [nan if v is None else v for v in curve.y]


def _both(ax: plt.Axes, result: ValidationResult, group: str, name: str, **kw: object) -> None:
    """The model's curve (solid) and the reference's (dashed) named ``name``, where present."""
    for who, m, style in (
        ("model", result.model, MODEL_STYLE),
        (result.reference.who, result.reference, REFERENCE_STYLE),
    ):
        curve = _curves(m, group).get(name)
        if curve is not None:
            ax.plot(*_xy(curve), label=who, **{**style, **kw})  # type: ignore[arg-type]


def _finish(fig: Figure, axes: list[plt.Axes]) -> Figure:
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def draw_eos(result: ValidationResult) -> Figure:
    fig, (near, wide) = plt.subplots(1, 2, figsize=(10, 4))
    _both(near, result, "equation_of_state", "eos_energy_eV_per_atom", marker="o", ms=3)
    near.set(xlabel="lattice constant a (Å)", ylabel="energy (eV/atom)")
    near.set_title("around each calculator's minimum", fontsize=9)
    _both(wide, result, "smoothness", "volume_energy_eV_per_atom")
    wide.set(xlabel="lattice constant a (Å)", ylabel="energy (eV/atom)")
    wide.set_title("wide range (smoothness)", fontsize=9)
    return _finish(fig, [near, wide])


def draw_elastic(result: ValidationResult) -> Figure:
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, mode in zip(axes, ("uniaxial", "biaxial", "shear"), strict=True):
        _both(ax, result, "elastic", f"elastic_{mode}_GPa", marker="o", ms=3)
        ax.set(xlabel="strain", ylabel="ΔE / V (GPa)")
        ax.set_title(mode, fontsize=9)
    return _finish(fig, list(axes))


def draw_phonons(result: ValidationResult) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 4))
    for m, style, who in (
        (result.model, MODEL_STYLE, "model"),
        (result.reference, REFERENCE_STYLE, result.reference.who),
    ):
        curves = _curves(m, "phonons")
        for i in range(3):
            band = curves.get(f"phonon_band_{i}_THz")
            if band is not None:
                ax.plot(*_xy(band), label=who if i == 0 else None, **style)  # type: ignore[arg-type]
    special = _curves(result.reference, "phonons").get("phonon_special_points")
    if special is not None and special.labels:
        ticks: dict[float, str] = {}  # a break in the path (K,U) puts two labels at one x
        for x, label in zip(_xy(special)[0], special.labels, strict=True):
            name = "Γ" if label == "G" else label
            ticks[x] = f"{ticks[x]}|{name}" if x in ticks else name
            ax.axvline(x, color="0.7", lw=0.8)
        ax.set_xticks(list(ticks), list(ticks.values()))
    ax.set(xlabel="wave vector along the path", ylabel="frequency (THz)")
    return _finish(fig, [ax])


def draw_pair(result: ValidationResult) -> Figure:
    fig, (energy, slope) = plt.subplots(1, 2, figsize=(10, 4))
    _both(energy, result, "smoothness", "pair_energy_eV")
    energy.set(xlabel="distance to the neighbour d (Å)", ylabel="E(d) - E(lattice site) (eV)")
    _both(slope, result, "smoothness", "pair_slope_eV_per_A")
    slope.set(xlabel="distance to the neighbour d (Å)", ylabel="dE/dd from the force (eV/Å)")
    return _finish(fig, [energy, slope])


def draw_ramp(result: ValidationResult) -> Figure:
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    (temp, order), (dist, pot) = axes
    _both(temp, result, "heating_ramp", "ramp_temperature_K")
    target = _curves(result.reference, "heating_ramp").get("ramp_target_K")
    if target is not None:
        temp.plot(*_xy(target), color="tab:orange", lw=1, label="target")
    temp.set(ylabel="temperature (K)")
    _both(order, result, "heating_ramp", "ramp_order")
    order.set(ylabel="{200} Bragg order |S(k)|²/N²")
    _both(dist, result, "heating_ramp", "ramp_min_distance_A")
    ramp = result.model.groups.get("heating_ramp")
    if ramp is not None and ramp.notes:
        temp.set_title(ramp.notes[0].split(";")[0], fontsize=8, color="tab:red")
    dist.set(xlabel="time (ps)", ylabel="closest pair (Å)")
    _both(pot, result, "heating_ramp", "ramp_potential_eV_per_atom")
    pot.set(xlabel="time (ps)", ylabel="potential energy (eV/atom)")
    return _finish(fig, [temp, order, dist, pot])


def draw_nve(result: ValidationResult) -> Figure:
    fig, (energy, temp) = plt.subplots(1, 2, figsize=(10, 4))
    _both(energy, result, "nve", "nve_total_meV_per_atom")
    energy.set(xlabel="time (ps)", ylabel="E_total - E_total(0) (meV/atom)")
    _both(temp, result, "nve", "nve_temperature_K")
    temp.set(xlabel="time (ps)", ylabel="temperature (K)")
    return _finish(fig, [energy, temp])


def draw_frequencies(result: ValidationResult) -> Figure:
    """Every held-out molecule's modes, the model's against the reference's (sorted, paired)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    model, ref = _curves(result.model, "vibrations"), _curves(result.reference, "vibrations")
    top = 0.0
    for mol_id, theirs in ref.items():
        mine = model.get(mol_id)
        if mine is None or len(mine.y) != len(theirs.y):
            continue
        x, y = _xy(theirs)[1], _xy(mine)[1]
        ax.plot(x, y, "o", ms=3, alpha=0.7, label=mol_id)
        top = max(top, *(v for v in x + y if v == v))
    ax.plot([0, top], [0, top], **REFERENCE_STYLE)  # type: ignore[arg-type]
    ax.set(xlabel=f"{result.reference.who} frequency (cm⁻¹)", ylabel="model frequency (cm⁻¹)")
    return _finish(fig, [ax])


def draw_molecular_nvt(result: ValidationResult) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 4))
    colours = plt.get_cmap("tab10")
    for i, mol_id in enumerate(_curves(result.reference, "nvt")):
        for m, style in ((result.model, {"lw": 1.4}), (result.reference, {"lw": 0.9, "ls": "--"})):
            curve = _curves(m, "nvt").get(mol_id)
            if curve is not None:
                label = mol_id if m is result.model else None
                ax.plot(*_xy(curve), color=colours(i % 10), label=label, **style)  # type: ignore[arg-type]
    nvt = result.model.groups.get("nvt")
    if nvt is not None and nvt.values.get("nvt_max_bond_deviation_A") is not None:
        limit = next(
            (c.tolerance for c in result.checks if c.metric == "nvt_max_bond_deviation_A"), None
        )
        if limit is not None:
            ax.axhline(limit, color="tab:red", lw=1, label="limit")
    ax.set(xlabel="time (ps)", ylabel="largest bond deviation (Å)")
    return _finish(fig, [ax])


# file, group it needs, drawing, title, caption
FIGURES = (
    ("eos.png", "equation_of_state", draw_eos, "Equation of state",
     "Energy per atom of the conventional cell against the lattice constant: left, the points "
     "fitted for a0 and the bulk modulus; right, the wide range of the smoothness check."),
    ("elastic.png", "elastic", draw_elastic, "Strain energy",
     "Energy density of the three homogeneous strains at each calculator's a0; the curvature "
     "at zero gives C11, C11 + C12 and C44."),
    ("phonons.png", "phonons", draw_phonons, "Phonon dispersion",
     "Finite-displacement phonons along the fcc path at each calculator's a0; the checks read "
     "the frequencies at X and L."),
    ("pair.png", "smoothness", draw_pair, "One atom pushed at its neighbour",
     "An atom of the crystal moved along [110] towards its nearest neighbour: the energy must "
     "rise all the way, and the force (right) must be its slope."),
    ("ramp.png", "heating_ramp", draw_ramp, "Heating ramp",
     "Langevin NVT with a linearly rising target temperature; the run stops at the first "
     "failure (non-finite, closest pair below the floor, runaway)."),
    ("nve.png", "nve", draw_nve, "NVE energy conservation",
     "Total energy per atom against time; the drift is the slope of a linear fit."),
    ("frequencies.png", "vibrations", draw_frequencies, "Harmonic frequencies",
     "Each held-out molecule's modes at the calculator's own minimum, the model's against the "
     "reference's (sorted and paired); on the dashed line they agree."),
    ("nvt.png", "nvt", draw_molecular_nvt, "Hot NVT of held-out molecules",
     "The largest deviation of any bond from its length at the reference minimum, model solid, "
     "reference dashed; a run stops at its first failure (a bond off by more than the limit, "
     "or the molecule in pieces)."),
)  # fmt: skip


def draw_figures(result: ValidationResult, folder: Path, prefix: str) -> list[FigureRef]:
    """Write the figures of the groups the suite ran into ``folder``; refs relative to the
    page, whose figures sit in ``prefix``/."""
    refs = []
    for name, group, draw, title, caption in FIGURES:
        if group not in result.reference.groups:
            continue
        save(draw(result), folder / name)
        refs.append(FigureRef(f"{prefix}/{name}", title, caption))
    return refs


def _value(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return fmt(float(v))


def error_text(c: CheckResult) -> str:
    if c.error is None:
        return "–"
    if c.kind == "relative" and c.relative_error is not None:
        return f"{c.relative_error * 100:+.1f} %"
    return f"{c.error:+.3g}"


def _checks_table(result: ValidationResult) -> str:
    head = ["property", "model", "reference", "error", "tolerance", "unit", "verdict", "s", "why"]
    lines = ["<table class='checks'>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for c in result.checks:
        verdict = "pass" if c.passed else "FAIL"
        cells = [
            f"<td><code>{escape(c.metric)}</code></td>",
            f"<td class='num'>{_value(c.value)}</td>",
            f"<td class='num'>{_value(c.reference)}</td>",
            f"<td class='num'>{escape(error_text(c))}</td>",
            f"<td>{escape(c.tolerance_text)}</td>",
            f"<td>{escape(c.unit)}</td>",
            f"<td class='verdict'>{verdict}</td>",
            f"<td class='num'>{c.wall_s:.1f}</td>",
            f"<td class='note'>{escape(c.why)}"
            + (f"<br><b>{escape(c.note)}</b>" if c.note else "")
            + "</td>",
        ]
        lines.append(f"<tr class='{verdict.lower()}'>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _other_values(result: ValidationResult) -> str:
    """Values measured but not checked (unrelaxed energies, closest approaches)."""
    checked = {c.metric for c in result.checks}
    rows = []
    for group, ref in result.reference.groups.items():
        model = result.model.groups.get(group)
        for key, value in ref.values.items():
            if key in checked:
                continue
            mine = model.values.get(key) if model is not None else None
            rows.append(
                f"<tr><td>{escape(group)}</td><td><code>{escape(key)}</code></td>"
                f"<td class='num'>{_value(mine)}</td><td class='num'>{_value(value)}</td></tr>"
            )
    if not rows:
        return ""
    return (
        "<h2>Other values measured</h2>\n<table><tr><th>group</th><th>value</th><th>model</th>"
        "<th>reference</th></tr>\n" + "\n".join(rows) + "\n</table>"
    )


def _header(result: ValidationResult) -> str:
    s, m, r = result.suite, result.model, result.reference
    passed = sum(c.passed for c in result.checks)
    threads = f", torch threads {result.torch_threads}" if result.torch_threads else ""
    rows = [
        ("model", escape(m.who)),
        ("reference", escape(r.who)),
        (
            "suite",
            f"{escape(s.name)} v{s.version} <span class='hash'>sha256 {escape(s.sha256)}</span>",
        ),
        ("checks passed", f"{passed} of {len(result.checks)}"),
        (
            ("held-out molecules", escape(", ".join(r.molecules)))
            if r.molecules
            else (
                "a0 (model, reference)",
                f"{_value(m.lattice_a0_A)} Å, {_value(r.lattice_a0_A)} Å",
            )
        ),
        ("wall time", f"model {m.wall_s:.0f} s, reference {r.wall_s:.0f} s{threads}"),
    ]
    if m.lattice_error:
        rows.append(("no a0", escape(m.lattice_error)))
    if m.notes:
        rows.append(("left out", escape("; ".join(m.notes))))
    body = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table class='header'>\n{body}\n</table>"


def render_page(result: ValidationResult, figures: list[FigureRef]) -> str:
    title = f"mlipilot validation: {result.suite.name} v{result.suite.version}"
    body = [
        f"<h1>{escape(title)}</h1>",
        _header(result),
        "<h2>Checks</h2>",
        _checks_table(result),
        "<h2>Curves (model solid, reference dashed)</h2>",
        *(figure_html(f) for f in figures),
        _other_values(result),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{escape(title)}</title>\n<style>{PAGE_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


JSON_NAME, PAGE_NAME, FIGURE_DIR = "validation.json", "validation.html", "validation"


def write_outputs(result: ValidationResult, out_dir: Path) -> tuple[Path, Path]:
    """``validation.json``, ``validation.html`` and the figures in ``validation/``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / JSON_NAME
    json_path.write_text(result.model_dump_json(indent=1), encoding="utf-8")
    refs = draw_figures(result, out_dir / FIGURE_DIR, FIGURE_DIR)
    page = out_dir / PAGE_NAME
    page.write_text(render_page(result, refs), encoding="utf-8")
    return json_path, page
