"""Content-Encoding and JSON parsing shared by both protocols."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from ..errors import BadInput, MalformedBody, PayloadTooLarge


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a gzip/deflate Content-Encoding, refusing to inflate past ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadInput(f"unsupported Content-Encoding {encoding!r}")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise MalformedBody(f"body is not valid {encoding} data") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
    return out


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedBody("body is not valid JSON") from None


def to_array(values: Any, what: str, dtype: np.dtype[Any] | None = None) -> NDArray[Any]:
    """Nested JSON lists -> an ndarray, or BadInput when they are not rectangular.

    Whether it holds numbers, is empty, has the model's shape and is finite is the
    model's check (`OnnxClassifier.validate`), made once for every protocol.
    """
    try:
        return np.array(values, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise BadInput(f"{what} must be a rectangular array of numbers") from None


def check_batch(n: int, max_batch: int) -> None:
    """The batch-size limit, checked while decoding, before any array is built."""
    if n > max_batch:
        raise BadInput(f"batch of {n} exceeds the limit of {max_batch} instances")


def dumps(value: Any) -> bytes:
    """JSON with numpy arrays written natively (float32 with their shortest repr)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
