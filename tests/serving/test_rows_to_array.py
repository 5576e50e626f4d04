"""v1's fast path from JSON rows to an array (`encoding._rows_to_array`) gives exactly
what the general path gives, array or error, for any nested JSON value: it only skips
the object array the general path builds to check each value's type."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import BadInput
from service.protocol import encoding

_scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
_rows = st.lists(
    st.lists(st.one_of(_scalars, st.lists(_scalars, max_size=2)), max_size=5), max_size=4
)
_equal_rows = st.integers(min_value=0, max_value=6).flatmap(
    lambda width: st.lists(
        st.lists(
            st.one_of(st.integers(-1000, 1000), st.floats(width=32)), min_size=width, max_size=width
        ),
        min_size=1,
        max_size=4,
    )
)


def _decode(values: Any, fast: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(encoding, "_rows_to_array", lambda values: None)
        try:
            return "array", encoding.to_array(values, '"instances"')
        except BadInput as exc:
            return "error", str(exc)


@settings(max_examples=300, deadline=None)
@given(values=st.one_of(_rows, _equal_rows, _scalars))
def test_fast_rows_match_the_general_path(values: Any) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast = _decode(values, True, monkeypatch)
        general = _decode(values, False, monkeypatch)
    assert fast[0] == general[0], (values, fast, general)
    if fast[0] == "error":
        assert fast[1] == general[1]
    else:
        assert fast[1].dtype == general[1].dtype and fast[1].shape == general[1].shape
        np.testing.assert_array_equal(fast[1], general[1])


def test_plain_rows_take_the_fast_path_and_anything_else_does_not() -> None:
    assert encoding._rows_to_array([[1.0, 2], [3, 4.5]]) is not None
    assert encoding._rows_to_array([[1.0, True]]) is None  # a bool is no number here
    assert encoding._rows_to_array([[1.0], [2.0, 3.0]]) is None  # ragged
    assert encoding._rows_to_array([[[1.0]]]) is None  # deeper than rows
    assert encoding._rows_to_array([]) is None
