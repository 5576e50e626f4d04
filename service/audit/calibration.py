"""Held-out answer tables for the lossy output modes, fitted on rows a model never saw.

The target's table comes from its manifest's ``calibration`` block (what the server
answers from) or, when the manifest has none, from ``calibration_rows`` of its split:
every row that is neither its member nor in the test split (utility is measured
there) nor an evaluation non-member of the paper's attacks. Population models get
theirs from rows outside the population's pool, so no model's table saw its members.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..defense import OutputCalibration
from .rows import rows_of
from .splits import Split

if TYPE_CHECKING:
    from .datasets import Dataset

CALIBRATION_ROWS_NOTE = (
    "the calibration block is fitted on every row of the data set that is not a member, "
    "not in the test split and not a paper evaluation non-member"
)
"""What a manifest says about where its ``calibration`` block comes from."""

Forward = Callable[[NDArray[Any]], NDArray[Any]]


def calibration_rows(split: Split, n_rows: int) -> NDArray[np.int64]:
    """Rows of the data set that may calibrate the target: not its members, not the
    test split, not the paper's evaluation non-members."""
    taken = np.concatenate(
        [split.target_members, split.test, split.eval_nonmembers, split.eval_members]
    ).astype(np.int64)
    return np.setdiff1d(np.arange(n_rows, dtype=np.int64), taken)


def fit_calibration(
    forward: Forward, dataset: Dataset, rows: NDArray[np.int64]
) -> OutputCalibration:
    """The model's clean logits on ``rows`` and their true labels, as answer tables."""
    if len(rows) == 0:
        raise ValueError("no held-out rows to calibrate on")
    held_out = rows_of(dataset, np.asarray(rows, dtype=np.int64))
    return OutputCalibration.fit(np.asarray(forward(held_out.x)), held_out.y)


def manifest_with_calibration(
    manifest: dict[str, Any], forward: Forward, dataset: Dataset, split: Split
) -> dict[str, Any]:
    """``manifest`` with a fresh ``calibration`` block (on ``calibration_rows``), the
    other keys kept in their order."""
    table = fit_calibration(forward, dataset, calibration_rows(split, len(dataset)))
    return {**manifest, "calibration": table.as_dict(), "calibration_rows": CALIBRATION_ROWS_NOTE}
