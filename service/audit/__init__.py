"""Auditing toolkit: datasets, the paper's splits, training, attacks and reports.

Needs the optional `.[audit]` extra (torch, scikit-learn). Import the submodules
directly (`service.audit.datasets`, ...): this package root imports nothing heavy,
so the serving code can never pull torch in by accident.
"""
