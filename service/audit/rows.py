"""Rows of a data set as the audit hands them around: inputs, labels and row numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from .datasets import Dataset


@dataclass(frozen=True, eq=False)
class Rows:
    """Inputs and true labels of some rows of the data set, and which rows they are
    (``index``, the data set's row numbers: how the audit keeps fits off evaluation rows)."""

    x: NDArray[Any]
    y: NDArray[np.int64]
    index: NDArray[np.int64]


def rows_of(dataset: Dataset, rows: NDArray[np.int64]) -> Rows:
    """Inputs and labels of the given data set rows."""
    index = np.asarray(rows, dtype=np.int64)
    return Rows(np.ascontiguousarray(dataset.x[index]), dataset.y[index], index)
