"""The shipped QM7-like molecule list, its loader's errors, levels and the molecule split."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rdkit import Chem
from typer.testing import CliRunner

from mlipilot.cli import app
from mlipilot.data.molecules.generate_list import generate as generate_list
from mlipilot.data.molecules.generate_list import render_csv
from mlipilot.data.molecules.levels import get_level
from mlipilot.data.molecules.molecule_list import (
    SHIPPED_LIST,
    MoleculeListError,
    load_molecule_list,
)
from mlipilot.data.molecules.qm7 import ensure_qm7, split_molecules
from mlipilot.errors import MlipilotError

HEADER = "id,smiles,heavy_atoms\n"


def test_shipped_list_is_qm7_like() -> None:
    mols = load_molecule_list()
    assert len(mols) >= 200
    assert len({m.mol_id for m in mols}) == len(mols)
    assert {Chem.MolToSmiles(Chem.MolFromSmiles(m.smiles)) for m in mols} == {
        m.smiles for m in mols
    }  # canonical, so "unique SMILES" means unique molecules
    for m in mols:
        rd = Chem.MolFromSmiles(m.smiles)
        assert 1 <= rd.GetNumHeavyAtoms() <= 7
        assert {a.GetSymbol() for a in rd.GetAtoms()} <= {"C", "N", "O", "S"}
    assert {m.heavy_atoms for m in mols[:20]} != {7}, "the first rows should mix sizes"


def test_shipped_list_is_what_the_generator_makes() -> None:
    # Provenance: the header names the command; rerunning it reproduces the file exactly.
    # Rows compared, not the comment naming the RDKit release that made them.
    def rows(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("#")]

    n = len(load_molecule_list())
    shipped = SHIPPED_LIST.read_text(encoding="utf-8")
    assert f"generate_list --count {n} --seed 0" in shipped
    assert rows(shipped) == rows(render_csv(generate_list(n, 0), count=n, seed=0))


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("m1,CCO,3\nm2,C1CC,3\n", r":3: invalid SMILES 'C1CC'"),
        ("m1,CCCl,3\n", r":2: SMILES 'CCCl' has element\(s\) Cl"),
        ("m1,CCCCCCCC,8\n", r":2: SMILES 'CCCCCCCC' has 8 heavy atoms; at most 7"),
        ("m1,CCO,2\n", r":2: heavy_atoms is '2' but SMILES 'CCO' has 3"),
        ("m1,CCO,3\nm1,CC,2\n", r":3: duplicate id 'm1' \(first on line 2\)"),
        ("m1,CCO\n", r":2: expected 3 fields"),
        ("m1,[NH4+],1\n", r":2: SMILES '\[NH4\+\]' is charged"),
        ("m/1,CCO,3\n", r":2: id 'm/1' must be"),
        ("T,CCO,3\n", r":2: id 'T' must be"),  # extxyz would read it back as True
        ("12,CCO,3\n", r":2: id '12' must be"),
    ],
)
def test_bad_rows_name_file_line_and_value(tmp_path: Path, rows: str, expected: str) -> None:
    path = tmp_path / "mols.csv"
    path.write_text(HEADER + rows, encoding="utf-8")
    with pytest.raises(MoleculeListError, match=str(path) + expected):
        load_molecule_list(path)


def test_missing_header_is_named(tmp_path: Path) -> None:
    path = tmp_path / "mols.csv"
    path.write_text("# comment\nm1,CCO,3\n", encoding="utf-8")
    with pytest.raises(MoleculeListError, match="header 'id,smiles,heavy_atoms', got 'm1,CCO,3'"):
        load_molecule_list(path)


def test_unknown_level_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(MlipilotError, match=r"unknown level 'pbe/sto-3g'; known levels: b3lyp"):
        ensure_qm7(tmp_path / "out", molecules=3, level="pbe/sto-3g")
    assert not (tmp_path / "out").exists()
    assert get_level("B3LYP/6-31G(d)").name == "b3lyp/6-31g*"


def test_cli_reports_a_bad_list_row(tmp_path: Path) -> None:
    path = tmp_path / "mols.csv"
    path.write_text(HEADER + "m1,CCO,3\nm2,C(C,2\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["data", "qm7", "--level", "quick", "--molecules", "2", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--molecule-list", str(path)])
    assert result.exit_code == 2
    assert "invalid SMILES 'C(C'" in " ".join(result.output.split())
    assert ":3:" in result.output.replace("\n", "")


def test_cli_unknown_level() -> None:
    result = CliRunner().invoke(app, ["data", "qm7", "--level", "hf"])
    assert result.exit_code == 2
    assert "unknown level 'hf'" in result.output


@given(
    n=st.integers(min_value=2, max_value=60),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    fraction=st.floats(min_value=0.01, max_value=0.99),
)
def test_split_by_molecule_is_disjoint_and_complete(n: int, seed: int, fraction: float) -> None:
    ids = [f"m{i:04d}" for i in range(n)]
    train, test = split_molecules(ids, seed, fraction)
    assert not set(train) & set(test)
    assert sorted(train + test) == ids
    assert train and test
    assert (train, test) == split_molecules(ids, seed, fraction)  # deterministic
