"""The request path's array checks (service/arrays.py): the C versions against numpy's,
on every value class they must tell apart, and numpy's where C hands back None."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from service import arrays
from service.defense._compiled import kernel


def _cases(seed: int) -> list[NDArray[Any]]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(7, 5))
    ties = np.round(base)  # equal values in a row: the first index wins
    out = []
    for dtype in (np.float32, np.float64):
        for values in (base, ties, np.zeros((7, 5))):
            out.append(values.astype(dtype))
            for bad in (np.nan, np.inf, -np.inf):
                spoiled = values.astype(dtype)
                spoiled[rng.integers(7), rng.integers(5)] = bad
                out.append(spoiled)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_all_finite_and_label_flips_agree_with_numpy(seed: int) -> None:
    cases = _cases(seed)
    rng = np.random.default_rng(seed)
    for values in cases:
        assert arrays.all_finite(values) == bool(np.isfinite(values).all())
        other = cases[rng.integers(len(cases))]
        expected = int(np.count_nonzero(values.argmax(axis=1) != other.argmax(axis=1)))
        assert arrays.label_flips(values, other) == expected


@pytest.mark.skipif(kernel is None, reason="no C kernel (tests/defense/test_kernel.py)")
def test_the_kernel_leaves_other_arrays_to_numpy() -> None:
    """Views with strides, other dtypes, mismatched shapes: None, and numpy answers."""
    assert kernel is not None
    values = np.arange(12.0).reshape(3, 4)
    assert kernel.all_finite(values) is True
    assert kernel.all_finite(values.T) is None
    assert kernel.all_finite(values.astype(np.float16)) is None
    assert kernel.all_finite(values.astype(">f8")) is None
    assert kernel.all_finite([1.0]) is None
    assert kernel.label_flips(values, values[:, ::-1]) is None
    assert kernel.label_flips(values, values[:2]) is None
    assert kernel.label_flips(values, np.zeros((3, 4))) == 3  # zeros: argmax 0, values: 3
    reversed_rows = values[:, ::-1]
    assert arrays.label_flips(values, reversed_rows) == 3
    assert arrays.all_finite(np.array([[np.nan]]).T) is False
