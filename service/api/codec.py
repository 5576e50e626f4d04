"""Protocol decoding and encoding: v1 JSON and Open Inference Protocol v2 (JSON and
binary tensors) to and from numpy. The runtime never sees these wire formats."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from ..errors import BadInput, MalformedBody, PayloadTooLarge

# Open Inference Protocol datatypes we accept for numeric input tensors.
V2_DTYPES: dict[str, np.dtype[Any]] = {
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
}
OUTPUT_NAME = "probabilities"
HEADER_LENGTH = "inference-header-content-length"


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
    """Nested JSON lists -> a numeric ndarray, or a clear 422."""
    try:
        array = np.array(values, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise BadInput(f"{what} must be a rectangular array of numbers") from None
    if array.dtype.kind not in "iuf":
        raise BadInput(f"{what} must contain numbers only")
    return array


# ---------------------------------------------------------------- v1


def decode_v1(body: bytes, max_batch: int) -> NDArray[Any]:
    """{"instances": [instance, ...]} -> array (n, *sample_shape)."""
    payload = parse_json(body)
    if not isinstance(payload, dict) or "instances" not in payload:
        raise BadInput('body must be a JSON object with an "instances" list')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise BadInput('"instances" must be a list')
    _check_batch(len(instances), max_batch)
    return to_array(instances, '"instances"')


def encode_v1(
    name: str, version: str, labels: list[str], probabilities: NDArray[np.float32]
) -> bytes:
    probabilities = np.ascontiguousarray(probabilities)
    top = probabilities.argmax(axis=1).tolist()
    # orjson writes float32 arrays with their shortest repr (0.1, not 0.10000000149011612).
    predictions = [
        {"label": labels[i], "probabilities": probabilities[row]} for row, i in enumerate(top)
    ]
    return orjson.dumps(
        {"model": name, "model_version": version, "predictions": predictions},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def _check_batch(n: int, max_batch: int) -> None:
    if n == 0:
        raise BadInput("the batch is empty")
    if n > max_batch:
        raise BadInput(f"batch of {n} exceeds the limit of {max_batch} instances")


# ---------------------------------------------------------------- v2


@dataclass(frozen=True, slots=True)
class V2Request:
    batch: NDArray[Any]
    request_id: str | None
    binary_output: bool


def decode_v2(body: bytes, header_length: str | None, input_name: str, max_batch: int) -> V2Request:
    """An inference request, JSON or with the binary tensor data extension."""
    binary = b""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise BadInput("Inference-Header-Content-Length must be an integer") from None
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
    if datatype not in V2_DTYPES:
        raise BadInput(f"datatype must be one of {sorted(V2_DTYPES)}")
    dtype = V2_DTYPES[datatype]
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise BadInput('"shape" must be a non-empty list of non-negative integers')
    _check_batch(shape[0], max_batch)
    size = int(np.prod(shape, dtype=np.int64))
    params = tensor.get("parameters") or {}
    binary_size = params.get("binary_data_size") if isinstance(params, dict) else None
    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size != len(binary):
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


def _flat_to_array(data: Any, size: int, dtype: np.dtype[Any]) -> NDArray[Any] | None:
    """A flat list of ``size`` numbers straight into an array of ``dtype`` (about twice
    as fast as np.array, which first scans the list for nesting); None when ``data``
    is anything else, so the general path decodes it and words the error."""
    if type(data) is not list or len(data) != size or size == 0:
        return None
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
                return bool(params["binary_data"])
    params = payload.get("parameters") or {}
    return bool(isinstance(params, dict) and params.get("binary_data_output", False))


def encode_v2(
    name: str, version: str, request: V2Request, probabilities: NDArray[np.float32]
) -> tuple[bytes, dict[str, str]]:
    """Response body and extra headers; binary output appends raw little-endian FP32."""
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
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return header, {}
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}
