"""The campaign's validation stage: an accepted model checked on physics the scorecard never sees.

It runs after the last iteration on the campaign's best model (and, with ``validation.accepts``,
on every candidate as it is accepted), with the suite the campaign names (validation/). The
agent never sees the results: they become a ``validation`` row in the ledger, the candidate's
``validation.json`` and ``validation.html``, a line in the summary and a section of the report.
A model whose validation breaks (a relaxation that raises, say) is recorded as an error; the
campaign goes on. A stop (cancel, shutdown) interrupts the stage like any other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlipilot.config import RayResources, ValidationConfig
from mlipilot.errors import MlipilotError
from mlipilot.ledger import LedgerEvent
from mlipilot.stopping import CampaignStopped, StopRequest

MAX_FAILED_NAMED = 8  # in a row's reason; the detail keeps them all


@dataclass(frozen=True)
class ValidationRecord:
    """What the ledger row of one validation says (also read back from it)."""

    candidate: str
    status: str  # passed (every check), failed (some checks), error (the stage broke)
    reason: str
    detail: dict[str, Any]

    @classmethod
    def from_event(cls, event: LedgerEvent) -> ValidationRecord:
        return cls(
            event.candidate or "", event.status or "", event.reason or "", event.detail or {}
        )


def suite_file(config: ValidationConfig) -> Path | None:
    """The campaign's suite file, or None when it validates nothing."""
    if config.suite is None:
        return None
    from mlipilot.validation.suite import find_suite

    return find_suite(config.suite)


def validate_candidate(
    config: ValidationConfig,
    candidate: str,
    package: Path,
    out_dir: Path,
    stop: StopRequest,
    note: Any,
    ray_resources: RayResources | None = None,
) -> ValidationRecord:
    """Run the campaign's suite on ``package``; the files go to ``out_dir`` (the candidate's
    folder). Never raises for what the model does; a stop raises CampaignStopped. With
    ``ray_resources`` (a campaign on Ray) a crystal suite's groups run as Ray tasks of that
    size, side by side."""
    from mlipilot.validation.page import write_outputs
    from mlipilot.validation.run import package_calculator, validate
    from mlipilot.validation.suite import ValidationSuite, load_suite, suite_elements

    path = suite_file(config)
    assert path is not None, "validate_candidate needs a suite"
    start = time.monotonic()
    try:
        spec, sha = load_suite(path)
        factory = package_calculator(package, suite_elements(spec))

        def progress(line: str) -> None:
            stop.check()  # between groups: a cancel does not wait for the whole suite
            if line.strip():  # the model's path is long and the same on every line
                note(f"{candidate} validation: {line.strip().replace(str(package), 'model')}")

        fan_outs = None
        if ray_resources is not None and isinstance(spec, ValidationSuite):
            from mlipilot.validation.ray_groups import ray_fan_outs

            fan_outs = ray_fan_outs(package, suite_elements(spec), spec, ray_resources)
        result = validate(
            factory,
            spec,
            sha256=sha,
            suite_file=str(path),
            model=str(package),
            progress=progress,
            fan_outs=fan_outs,
        )
    except CampaignStopped:
        raise
    except MlipilotError as exc:
        return ValidationRecord(candidate, "error", f"validation could not run: {exc}", {})
    except Exception as exc:  # a model the suite's code cannot handle: recorded, not fatal
        why = f"validation broke: {type(exc).__name__}: {exc}"
        return ValidationRecord(candidate, "error", why, {})
    json_path, page = write_outputs(result, out_dir)
    failed = result.failed
    passed = len(result.checks) - len(failed)
    reason = f"{passed} of {len(result.checks)} checks pass ({result.suite.name} v"
    reason += f"{result.suite.version})"
    if failed:
        more = " ..." if len(failed) > MAX_FAILED_NAMED else ""
        reason += f"; failing: {', '.join(failed[:MAX_FAILED_NAMED])}{more}"
    detail = {
        "suite": result.suite.name,
        "version": result.suite.version,
        "sha256": result.suite.sha256,
        "passed": passed,
        "total": len(result.checks),
        "failed": failed,
        "checks": [
            {
                "metric": c.metric,
                "value": c.value,
                "reference": c.reference,
                "tolerance": c.tolerance_text,
                "passed": c.passed,
            }
            for c in result.checks
        ],
        "result": json_path.as_uri(),
        "page": page.as_uri(),
        "wall_s": round(time.monotonic() - start, 1),
    }
    return ValidationRecord(candidate, "failed" if failed else "passed", reason, detail)
