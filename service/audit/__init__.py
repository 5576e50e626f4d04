"""Auditing toolkit: datasets, the paper's splits, training, attacks and reports.

Needs the optional `.[audit]` extra. Only the modules that train models need torch
(`architectures`, `training`, `shadows`, `population`, `target`, `evaluation`,
`runner`); the attacks, the protocol, scoring, statistics, reports, plots and the
gate import without it (`tests/audit/test_imports.py` holds the line). Import the
submodules directly (`service.audit.datasets`, ...): this package root imports
nothing heavy, so the serving code can never pull torch in by accident.
"""
