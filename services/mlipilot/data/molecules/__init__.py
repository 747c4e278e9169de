"""The molecular (QM7-like) data set: a shipped molecule list, RDKit geometries, normal-mode
sampled configurations, quantum-chemistry labels at a named level, and molecule-wise splits.

Entry point: :func:`mlipilot.data.molecules.qm7.ensure_qm7` (``mlipilot data qm7``).
"""
