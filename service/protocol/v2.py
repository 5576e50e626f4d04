"""Open Inference Protocol v2 (KServe / Triton REST): JSON tensors and the binary
tensor data extension (``Inference-Header-Content-Length``, ``binary_data_size``,
``binary_data`` / ``binary_data_output``), both directions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from ..errors import BadInput
from .dtypes import V2_DTYPES, v2_datatype
from .encoding import check_batch, check_json_values, dumps, parse_json, to_array

OUTPUT_NAME = "probabilities"
HEADER_LENGTH = "inference-header-content-length"

MAX_DIMENSIONS = 32
MAX_DIMENSION_SIZE = 2**31 - 1
"""Bounds on a request's ``shape``: no model takes more, and within them every size
is an exact Python int (numpy's int64 product of a shape wraps)."""


@dataclass(frozen=True, slots=True)
class V2Request:
    """A decoded inference request: the input batch and how to answer it."""

    batch: NDArray[Any]
    request_id: str | None
    binary_output: bool


def decode_v2_request(
    body: bytes, header_length: str | None, input_name: str, max_batch: int
) -> V2Request:
    """Server side: an inference request, JSON or with binary tensor data."""
    binary = b""
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()):
            raise BadInput("Inference-Header-Content-Length must be an integer")
        json_size = int(header_length)
        if not 0 < json_size <= len(body):
            raise BadInput("Inference-Header-Content-Length is out of range")
        body, binary = body[:json_size], body[json_size:]
    payload = parse_json(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise BadInput('body must be a JSON object with an "inputs" list')
    inputs = payload["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadInput(f"exactly one input tensor is expected, named {input_name!r}")
    tensor = inputs[0]
    if tensor.get("name") != input_name:
        raise BadInput(f"the input tensor must be named {input_name!r}")
    batch = _decode_tensor(tensor, binary, max_batch)
    return V2Request(batch, _request_id(payload), _wants_binary(payload))


def _decode_tensor(tensor: dict[str, Any], binary: bytes, max_batch: int) -> NDArray[Any]:
    datatype = tensor.get("datatype")
    if type(datatype) is not str or datatype not in V2_DTYPES:
        raise BadInput(f'"datatype" must be one of {sorted(V2_DTYPES)}')
    dtype = V2_DTYPES[datatype]
    shape = _shape(tensor.get("shape"))
    check_batch(shape[0], max_batch)
    size = math.prod(shape)
    params = tensor.get("parameters") or {}
    binary_size = params.get("binary_data_size") if isinstance(params, dict) else None
    if binary_size is not None:
        if type(binary_size) is not int or binary_size != len(binary):
            raise BadInput("binary_data_size does not match the binary data sent")
        if binary_size != size * dtype.itemsize:
            raise BadInput(
                f"binary data holds {binary_size} bytes, shape {shape} needs {size * dtype.itemsize}"
            )
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    if binary:
        raise BadInput("binary data sent but no input declares binary_data_size")
    if "data" not in tensor:
        raise BadInput('the input tensor has no "data"')
    array = _flat_to_array(tensor["data"], size, dtype)
    if array is None:
        array = to_array(tensor["data"], '"data"', dtype=dtype)
    if array.size != size:
        raise BadInput(f'"data" holds {array.size} values, shape {shape} needs {size}')
    return array.reshape(shape)


def _shape(shape: Any) -> list[int]:
    """The request's ``shape``, or BadInput unless it is 1 to MAX_DIMENSIONS integers
    from 0 to MAX_DIMENSION_SIZE."""
    if (
        type(shape) is not list
        or not 0 < len(shape) <= MAX_DIMENSIONS
        or not all(type(d) is int and 0 <= d <= MAX_DIMENSION_SIZE for d in shape)
    ):
        raise BadInput(
            f'"shape" must be a list of 1 to {MAX_DIMENSIONS} integers from 0 to '
            f"{MAX_DIMENSION_SIZE}"
        )
    return shape


def _flat_to_array(data: Any, size: int, dtype: np.dtype[Any]) -> NDArray[Any] | None:
    """A flat list of ``size`` numbers straight into an array of ``dtype`` (about twice
    as fast as np.array, which first scans the list for nesting); None when ``data``
    is anything else, so the general path decodes it and words the error. Values of a
    type ``dtype`` does not take are refused, never converted."""
    if type(data) is not list or len(data) != size or size == 0:
        return None
    check_json_values(data, '"data"', dtype)
    try:
        return np.fromiter(data, dtype=dtype, count=size)
    except (ValueError, TypeError, OverflowError):
        return None


def _request_id(payload: dict[str, Any]) -> str | None:
    request_id = payload.get("id")
    return request_id if isinstance(request_id, str) and len(request_id) <= 256 else None


def _wants_binary(payload: dict[str, Any]) -> bool:
    outputs = payload.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise BadInput('"outputs" must be a list of objects')
        for output in outputs:
            if output.get("name") != OUTPUT_NAME:
                raise BadInput(f"the only output is {OUTPUT_NAME!r}")
            params = output.get("parameters") or {}
            if isinstance(params, dict) and "binary_data" in params:
                return _flag(params["binary_data"], "binary_data")
    params = payload.get("parameters") or {}
    if isinstance(params, dict) and "binary_data_output" in params:
        return _flag(params["binary_data_output"], "binary_data_output")
    return False


def _flag(value: Any, name: str) -> bool:
    """A boolean parameter: JSON true or false, nothing truthy ("no" is not true)."""
    if type(value) is not bool:
        raise BadInput(f'"{name}" must be true or false')
    return value


def encode_v2_response(
    name: str, version: str, request: V2Request, probabilities: NDArray[np.float32]
) -> tuple[bytes, dict[str, str]]:
    """Server side: response body and extra headers; binary output appends raw
    little-endian FP32 after the JSON header."""
    output: dict[str, Any] = {
        "name": OUTPUT_NAME,
        "datatype": "FP32",
        "shape": list(probabilities.shape),
    }
    raw = b""
    if request.binary_output:
        raw = np.ascontiguousarray(probabilities, dtype="<f4").tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = probabilities.ravel()
    response: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": [output]}
    if request.request_id is not None:
        response["id"] = request.request_id
    header = dumps(response)
    if not raw:
        return header, {}
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def encode_v2_request(
    x: NDArray[Any],
    input_name: str,
    *,
    datatype: str | None = None,
    binary: bool = True,
    binary_output: bool = True,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Client side: (body, headers) of an inference request for the batch ``x``.

    ``binary`` sends the tensor as raw little-endian bytes after the JSON header;
    ``binary_output`` asks for the probabilities the same way.
    """
    name = datatype or v2_datatype(np.asarray(x).dtype)
    if name not in V2_DTYPES:
        raise ValueError(f"unsupported datatype {name}")
    array = np.ascontiguousarray(x, dtype=V2_DTYPES[name])
    tensor: dict[str, Any] = {"name": input_name, "shape": list(array.shape), "datatype": name}
    raw = b""
    if binary:
        raw = array.tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
    else:
        tensor["data"] = array.ravel()
    payload: dict[str, Any] = {
        "inputs": [tensor],
        "outputs": [{"name": OUTPUT_NAME, "parameters": {"binary_data": binary_output}}],
    }
    if request_id is not None:
        payload["id"] = request_id
    header = dumps(payload)
    headers = {"Content-Type": "application/json"}
    if binary:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }
    return header + raw, headers


def decode_v2_response(body: bytes, header_length: str | None) -> NDArray[np.float32]:
    """Client side: the ``probabilities`` output, from JSON data or binary bytes.
    ValueError if malformed."""
    json_part, binary = (
        (body[: int(header_length)], body[int(header_length) :]) if header_length else (body, b"")
    )
    try:
        output = orjson.loads(json_part)["outputs"][0]
        shape = output["shape"]
        if binary:
            return np.frombuffer(binary, dtype="<f4").reshape(shape).astype(np.float32)
        return np.asarray(output["data"], dtype=np.float32).reshape(shape)
    except (KeyError, IndexError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"malformed v2 answer: {exc}") from exc
