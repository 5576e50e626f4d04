"""Content-Encoding and JSON parsing shared by both protocols."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from ..errors import BadInput, MalformedBody, PayloadTooLarge, echo


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a gzip/deflate Content-Encoding, refusing to inflate past ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadInput(f"unsupported Content-Encoding {echo(encoding)}")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise MalformedBody(f"body is not valid {encoding} data") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
    # One complete stream and nothing after it: a truncated stream, a second gzip
    # member or trailing bytes would otherwise be silently dropped.
    if not inflater.eof:
        raise MalformedBody(f"body is a truncated {encoding} stream")
    if inflater.unused_data:
        raise MalformedBody(f"body holds data after its {encoding} stream (one stream only)")
    return out


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedBody("body is not valid JSON") from None


_NUMBERS = frozenset({int, float})
_JSON_TYPES: dict[str, tuple[frozenset[type], str]] = {
    "f": (_NUMBERS, "JSON numbers"),
    "i": (frozenset({int}), "integers"),
    "u": (frozenset({int}), "integers"),
    "b": (frozenset({bool}), "booleans"),
}
"""The JSON values a tensor of each numpy kind takes, by exact type (a bool is no int
here): floats take numbers, integers take integers only (0.7 is never truncated)."""


def check_json_values(values: Iterable[Any], what: str, dtype: np.dtype[Any] | None) -> None:
    """BadInput unless every value in the flat ``values`` has a type ``dtype`` takes
    (numbers when None): strings, booleans and fractions are refused, not converted."""
    allowed, words = _JSON_TYPES.get(dtype.kind if dtype is not None else "f", (frozenset(), ""))
    found = set(map(type, values))
    if list in found:
        raise BadInput(f"{what} must be a rectangular array of numbers")
    if not found <= allowed:
        raise BadInput(f"{what} must hold {words or 'values of a supported datatype'} only")


def to_array(
    values: Any, what: str, dtype: np.dtype[Any] | None = None, *, no_booleans: bool = False
) -> NDArray[Any]:
    """Nested JSON lists -> an ndarray, or BadInput when they are not rectangular, hold
    a value ``dtype`` does not take (`check_json_values`) or one out of its range.
    ``no_booleans``: the caller knows no JSON ``true`` or ``false`` is among the values
    (`has_no_booleans`), which lets rows skip the per-value type check.

    Whether it is empty, has the model's shape and is finite is the model's check
    (`OnnxClassifier.validate`), made once for every protocol.
    """
    rectangular = f"{what} must be a rectangular array of numbers"
    if dtype is None:
        fast = _rows_to_array(values, no_booleans)
        if fast is not None:
            return fast
    try:
        cells = np.array(values, dtype=object)  # ragged rows stay lists, found below
    except (ValueError, TypeError):
        raise BadInput(rectangular) from None
    check_json_values(cells.flat, what, dtype)
    try:
        return np.array(values) if dtype is None else cells.astype(dtype)
    except OverflowError:
        raise BadInput(f"{what} holds a value out of its datatype's range") from None
    except (ValueError, TypeError):
        raise BadInput(rectangular) from None


def has_no_booleans(body: bytes) -> bool:
    """Whether a JSON text holds no ``true`` or ``false`` anywhere: then no value parsed
    from it is a boolean (a conservative test: one inside a string also says no). A
    body with no ``r`` and no ``f`` at all (numbers and the key "instances") is
    answered by two memchr scans, 50x faster than looking for the words."""
    if b"r" not in body and b"f" not in body:
        return True
    return b"true" not in body and b"false" not in body


def _rows_to_array(values: Any, no_booleans: bool = False) -> NDArray[Any] | None:
    """A list of equally long lists of JSON numbers as `to_array` makes it, without
    its object array (a third faster for a 784-value row); None for anything else, which
    the general path decodes and words the error of.

    With ``no_booleans`` numpy alone tells: among JSON values only numbers and booleans
    make a numeric array (a string, a null, a huge integer or a ragged row does not),
    so a bool-free 2-D numeric array held numbers only; no type is checked per value
    (half the cost of a 32-row request)."""
    if type(values) is not list or not values or type(values[0]) is not list:
        return None
    if no_booleans:
        try:
            array = np.array(values)
        except (ValueError, TypeError, OverflowError):
            return None
        return array if array.ndim == 2 and array.dtype.kind in "fiu" else None
    width = len(values[0])
    found: set[type] = set()
    for row in values:
        if type(row) is not list or len(row) != width:
            return None
        found.update(map(type, row))
    if not found <= _NUMBERS:
        return None
    try:
        return np.array(values)
    except (ValueError, TypeError, OverflowError):
        return None


def check_batch(n: int, max_batch: int) -> None:
    """The batch-size limit, checked while decoding, before any array is built."""
    if n > max_batch:
        raise BadInput(f"batch of {n} exceeds the limit of {max_batch} instances")


def dumps(value: Any) -> bytes:
    """JSON with numpy arrays written natively (float32 with their shortest repr)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
