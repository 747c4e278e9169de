"""mlipilot: auto-research for machine-learned interatomic potentials."""

__version__ = "0.1.0"
