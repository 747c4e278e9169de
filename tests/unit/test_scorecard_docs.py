"""scorecard/README.md quotes every constraint of every shipped spec as the spec says it.

The README is what a reader checks a result against; it once gave the Cu energy bound as
15 meV/atom while cu-emt.yaml said 35.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlipilot.scoring.spec import load_spec

SCORECARDS = Path(__file__).resolve().parents[2] / "scorecard"
ROW = re.compile(r"^\| `(?P<metric>\w+)` \| (?P<op>[≤≥]) (?P<bound>[0-9.]+)\b")


def _documented(spec_file: str) -> dict[str, tuple[str, float]]:
    """The constraint rows of the README section headed by ``spec_file``."""
    text = (SCORECARDS / "README.md").read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    (section,) = [s for s in sections if s.startswith(f"`{spec_file}`")]
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            rows[match["metric"]] = (match["op"], float(match["bound"]))
    return rows


@pytest.mark.parametrize("spec_file", sorted(p.name for p in SCORECARDS.glob("*.yaml")))
def test_the_readme_quotes_each_constraint_as_the_spec_has_it(spec_file: str) -> None:
    spec, _ = load_spec(SCORECARDS / spec_file)
    expected = {
        c.metric: ("≤" if c.max is not None else "≥", c.threshold) for c in spec.constraints
    }
    assert _documented(spec_file) == expected
