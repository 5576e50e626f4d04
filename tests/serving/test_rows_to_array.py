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
from service.protocol.v1 import decode_v1_request

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


def _decode(
    values: Any, fast: bool, monkeypatch: pytest.MonkeyPatch, no_booleans: bool = False
) -> tuple[str, Any]:
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(encoding, "_rows_to_array", lambda values, no_booleans=False: None)
        try:
            return "array", encoding.to_array(values, '"instances"', no_booleans=no_booleans)
        except BadInput as exc:
            return "error", str(exc)


def _assert_same(values: Any, fast: tuple[str, Any], general: tuple[str, Any]) -> None:
    """The same array (dtype, shape, values) or the same error message."""
    assert fast[0] == general[0], (values, fast, general)
    if fast[0] == "error":
        assert fast[1] == general[1]
    else:
        assert fast[1].dtype == general[1].dtype and fast[1].shape == general[1].shape
        np.testing.assert_array_equal(fast[1], general[1])


def _has_bool(values: Any) -> bool:
    if isinstance(values, list):
        return any(_has_bool(value) for value in values)
    return isinstance(values, bool)


@settings(max_examples=300, deadline=None)
@given(values=st.one_of(_rows, _equal_rows, _scalars))
def test_fast_rows_match_the_general_path(values: Any) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast = _decode(values, True, monkeypatch)
        general = _decode(values, False, monkeypatch)
    _assert_same(values, fast, general)


@settings(max_examples=300, deadline=None)
@given(values=st.one_of(_rows, _equal_rows, _scalars))
def test_rows_known_to_hold_no_booleans_match_the_general_path(values: Any) -> None:
    # The v1 decoder says "no booleans" only when its body holds no true or false.
    no_booleans = not _has_bool(values)
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast = _decode(values, True, monkeypatch, no_booleans=no_booleans)
        general = _decode(values, False, monkeypatch)
    _assert_same(values, fast, general)


@pytest.mark.parametrize(
    ("body", "bool_free"),
    [
        (b'{"instances": [[1.5, -2e-3, 7]]}', True),
        (b'{"instances": [[1.5, true]]}', False),
        (b'{"instances": [[false]]}', False),
        (b'{"instances": [[1.0]], "note": "four"}', True),  # an r but no word: still free
        (b'{"instances": [[1.0]], "note": "truest"}', False),  # conservative: a word in a string
    ],
)
def test_a_body_is_bool_free_only_when_it_holds_neither_word(body: bytes, bool_free: bool) -> None:
    assert encoding.has_no_booleans(body) is bool_free


def test_v1_refuses_a_boolean_row_whatever_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BadInput, match="JSON numbers"):
        decode_v1_request(b'{"instances": [[1.0, true], [2.0, 3.0]]}', max_batch=8)
    rows = decode_v1_request(b'{"instances": [[1.0, 2], [3, 4.5]]}', max_batch=8)
    np.testing.assert_array_equal(rows, [[1.0, 2.0], [3.0, 4.5]])


def test_plain_rows_take_the_fast_path_and_anything_else_does_not() -> None:
    assert encoding._rows_to_array([[1.0, 2], [3, 4.5]]) is not None
    assert encoding._rows_to_array([[1.0, True]]) is None  # a bool is no number here
    assert encoding._rows_to_array([[1.0], [2.0, 3.0]]) is None  # ragged
    assert encoding._rows_to_array([[[1.0]]]) is None  # deeper than rows
    assert encoding._rows_to_array([]) is None
    assert encoding._rows_to_array([[1.0, 2]], no_booleans=True) is not None
    assert encoding._rows_to_array([[1.0, "2"]], no_booleans=True) is None  # a string
    assert encoding._rows_to_array([[1.0, None]], no_booleans=True) is None
    assert encoding._rows_to_array([[2**70]], no_booleans=True) is None  # beyond int64
    assert encoding._rows_to_array([[[1.0]]], no_booleans=True) is None  # deeper than rows
