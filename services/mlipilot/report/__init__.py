"""A static, offline HTML report of one campaign, built from its run folder alone."""

from __future__ import annotations

from mlipilot.report.build import build_report

__all__ = ["build_report"]
