"""Checks on the request path's arrays, in one C call where the kernel is built
(``service/defense/_kernel.c``): numpy's versions take two to four calls each, whose
fixed cost is most of a one-row request's checking (bench/micro-timings.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .defense._compiled import kernel as _kernel


def all_finite(values: NDArray[Any]) -> bool:
    """``np.isfinite(values).all()``."""
    if _kernel is not None:
        found = _kernel.all_finite(values)
        if found is not None:
            return bool(found)
    return bool(np.isfinite(values).all())


def label_flips(probabilities: NDArray[Any], logits: NDArray[Any]) -> int:
    """Rows of two (n, k) arrays whose argmax differs: the answers whose label the
    defense changed."""
    if _kernel is not None:
        found = _kernel.label_flips(probabilities, logits)
        if found is not None:
            return int(found)
    return int(np.count_nonzero(probabilities.argmax(axis=1) != logits.argmax(axis=1)))
