"""Validation after acceptance: physics the scorecard never sees, against a reference.

A suite (``validation/*.yaml``) names the properties and their tolerances; ``validate``
measures each with the model and the reference (EMT for Cu, GFN2-xTB for molecules) by the
same code and judges each check.
"""

from mlipilot.validation.result import CalculatorFactory, CheckResult, ValidationResult
from mlipilot.validation.run import package_calculator, validate
from mlipilot.validation.suite import MoleculeSuite, ValidationSuite, load_suite

__all__ = [
    "CalculatorFactory",
    "CheckResult",
    "MoleculeSuite",
    "ValidationResult",
    "ValidationSuite",
    "load_suite",
    "package_calculator",
    "validate",
]
