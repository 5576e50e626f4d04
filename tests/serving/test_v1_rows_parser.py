"""The compiled v1 body parser (service/protocol/_rows.c) against the general path
(orjson, then `to_array`): for any body, `decode_v1_request` returns the same array
(dtype, shape, bits) or raises the same error with the parser as without it. The
parser takes only rows of JSON numbers and hands everything else back (None)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import DynanoiseError
from service.protocol import v1

pytestmark = pytest.mark.skipif(
    os.environ.get("DYNANOISE_PURE_PYTHON") == "1", reason="DYNANOISE_PURE_PYTHON=1"
)
MAX_BATCH = 64


def test_the_parser_is_built() -> None:
    assert v1._rows is not None, "service/protocol/_rows.c is not built: reinstall"


def _decode(body: bytes, *, compiled: bool, float32: bool = False) -> tuple[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        if not compiled:
            patch.setattr(v1, "_rows", None)
        try:
            return "array", v1.decode_v1_request(body, MAX_BATCH, float32=float32)
        except DynanoiseError as exc:
            return type(exc).__name__, str(exc)


def _assert_same(body: bytes) -> None:
    """Compiled or not, the same array or error; and asked for float32, the compiled
    parser's array is the general path's cast as `OnnxClassifier.validate` casts it."""
    general = _decode(body, compiled=False)
    for float32 in (False, True):
        fast = _decode(body, compiled=True, float32=float32)
        assert fast[0] == general[0], (body, fast, general)
        if fast[0] != "array":
            assert fast[1] == general[1]
            continue
        a, b = fast[1], general[1]
        if float32 and a.dtype == np.float32:  # the general path leaves the cast to validate
            with np.errstate(over="ignore", invalid="ignore"):
                b = b.astype(np.float32)
        assert a.dtype == b.dtype and a.shape == b.shape, (body, a, b)
        # Bits, not values: -0.0 and 0.0 must not be told apart differently.
        bits = np.uint32 if a.dtype == np.float32 else np.uint64
        np.testing.assert_array_equal(a.view(bits), b.view(bits))


_WS = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])
_integers = st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1)
_reals = st.floats(allow_nan=False, allow_infinity=False)
_decimal_text = st.builds(
    lambda sign, whole, fraction, exponent: f"{sign}{whole}{fraction}{exponent}",
    st.sampled_from(["", "-"]),
    st.sampled_from(["0"]) | st.integers(1, 10**20).map(str),
    st.sampled_from([""])
    | st.text("0123456789", min_size=1, max_size=25).map(lambda digits: "." + digits),
    st.sampled_from([""])
    | st.builds(
        lambda e, s, v: f"{e}{s}{v}",
        st.sampled_from(["e", "E"]),
        st.sampled_from(["", "+", "-"]),
        st.integers(0, 400),
    ),
)


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    """Rows of numbers written as a client might: ints, floats' shortest repr, long
    decimals with exponents, odd whitespace; sometimes ragged, sometimes empty."""
    width = draw(st.integers(0, 6))
    kind = draw(st.sampled_from(["integers", "reals", "text", "mixed"]))
    token = {
        "integers": _integers.map(str),
        "reals": _reals.map(json.dumps),
        "text": _decimal_text,
        "mixed": st.one_of(_integers.map(str), _reals.map(json.dumps), _decimal_text),
    }[kind]
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        size = width if draw(st.integers(0, 9)) else draw(st.integers(0, 7))  # ragged at times
        ws = draw(_WS)
        rows.append(f"[{ws}" + f"{ws},{ws}".join(draw(token) for _ in range(size)) + f"{ws}]")
    ws = draw(_WS)
    return f'{ws}{{{ws}"instances"{ws}:{ws}[{ws}{f"{ws},{ws}".join(rows)}{ws}]{ws}}}{ws}'.encode()


@settings(max_examples=400, deadline=None)
@given(body=_bodies())
def test_rows_of_numbers_decode_as_the_general_path_decodes_them(
    body: bytes,
) -> None:
    _assert_same(body)


@settings(max_examples=400, deadline=None)
@given(body=_bodies(), at=st.integers(0, 10**6), byte=st.binary(min_size=0, max_size=2))
def test_a_damaged_body_decodes_or_fails_as_the_general_path_says(
    body: bytes, at: int, byte: bytes
) -> None:
    """One to two bytes replaced, inserted or removed anywhere: the parser never
    accepts what orjson refuses, nor reads a value differently."""
    at %= len(body) + 1
    _assert_same(body[:at] + byte + body[at + 1 :])


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2, 3]]}',
        b'{"instances": [[1.5, -0, -0.0, 3e2, 1E-320, 2.4703282292062328e-324]]}',
        b'{"instances": [[0.1000000000000000055511151231257827021181583404541015625]]}',
        b'{"instances": [[999999999999999, -999999999999999, 0.5]]}',
        b'{"instances": [[1e000000000000000000000000001, 5E+0022, 5e-0022, 9007199254740993.0]]}',
        b'{"instances": [[0.00000000000000000000000001, 123456789012345678901234.5]]}',
        b'{"instances": [[0.1234567890123456789012345, -0e999, 0.0e-999]]}',
        b'{"instances": [[1234567890123456]]}',  # 16 digits: the general path decides
        b'{"instances": [[12345678901234567890123]]}',
        b'{"instances": [[1e400]]}',
        b'{"instances": [[-1e400, 1]]}',
        b'{"instances": [[1e-400]]}',
        b'{"instances": [[01]]}',
        b'{"instances": [[1.]]}',
        b'{"instances": [[.5]]}',
        b'{"instances": [[+1]]}',
        b'{"instances": [[0x10]]}',
        b'{"instances": [[NaN]]}',
        b'{"instances": [[Infinity]]}',
        b'{"instances": [[1, 2], [3]]}',
        b'{"instances": [[]]}',
        b'{"instances": []}',
        b'{"instances": [[true, 1]]}',
        b'{"instances": [["1"]]}',
        b'{"instances": [[null]]}',
        b'{"instances": [[[1]]]}',
        b'{"instances": [1, 2]}',
        b'{"instances": [[1]], "signature_name": "x"}',
        b'{"instances": [[1]]} x',
        b'{"instances": [[1]]',
        b'{"instances": [[1,]]}',
        b'{"instances": [[1],]}',
        b'{"instan\\u0063es": [[1]]}',
        b"\xef\xbb\xbf" + b'{"instances": [[1]]}',
        b'{"instances": [' + b",".join([b"[1]"] * (MAX_BATCH + 1)) + b"]}",
        b"",
        b"[]",
    ],
)
def test_edge_bodies_decode_or_fail_as_the_general_path_says(
    body: bytes,
) -> None:
    _assert_same(body)


def test_the_parser_takes_the_simple_form_and_hands_back_the_rest() -> None:
    """It does the work for the common body (else nothing would be faster) and
    leaves every other body to the general path."""
    assert v1._rows is not None
    rows = v1._rows.v1_rows(b'{"instances": [[0.25, 1], [2, -3.5e1]]}')
    assert rows is not None and rows.dtype == np.float64
    np.testing.assert_array_equal(rows, [[0.25, 1.0], [2.0, -35.0]])
    ints = v1._rows.v1_rows(b'{"instances":[[1,-2]]}')
    assert ints is not None and ints.dtype == np.int64
    narrow = v1._rows.v1_rows(b'{"instances":[[1,-2],[0.1,1e39]]}', True)
    assert narrow is not None and narrow.dtype == np.float32
    np.testing.assert_array_equal(narrow, np.float32([[1, -2], [0.1, np.inf]]))
    for other in [b'{"instances": [[true]]}', b'{"inputs": [[1]]}', b'{"instances": [[1e999]]}']:
        assert v1._rows.v1_rows(other) is None
    with pytest.raises(TypeError):
        v1._rows.v1_rows('{"instances": [[1]]}')


def test_a_large_batch_decodes_as_the_general_path_decodes_it() -> None:
    """Past the parser's first buffer (1,024 values): 60 rows of 100."""
    rows = np.random.default_rng(3).normal(size=(60, 100)) * 10.0 ** np.arange(-50, 50)
    _assert_same(json.dumps({"instances": rows.tolist()}).encode())
    in_float32 = np.clip(rows, -1e38, 1e38).astype(np.float32)
    _assert_same(json.dumps({"instances": in_float32.tolist()}).encode())
