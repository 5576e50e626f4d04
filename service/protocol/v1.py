"""v1 JSON: ``{"instances": [...]}`` in, ``{"model", "model_version", "predictions":
[{"label", "probabilities"}]}`` out."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from ..errors import BadInput
from ..native import load_extension
from .encoding import check_batch, dumps, has_no_booleans, parse_json, to_array

_rows = load_extension("service.protocol._rows")


def decode_v1_request(body: bytes, max_batch: int, *, float32: bool = False) -> NDArray[Any]:
    """Server side: {"instances": [instance, ...]} -> array (n, *sample_shape).

    A body of rows of numbers and nothing else is parsed straight into the array where
    the C parser is built (``_rows.c``: the same array, a fraction of the time), already
    cast to float32 when ``float32`` says the model takes it (as `validate` would);
    everything else, errors included, takes orjson and `to_array`."""
    if _rows is not None and type(body) is bytes:
        rows = _rows.v1_rows(body, float32)
        if rows is not None:
            check_batch(len(rows), max_batch)
            return rows
    payload = parse_json(body)
    if not isinstance(payload, dict) or "instances" not in payload:
        raise BadInput('body must be a JSON object with an "instances" list')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise BadInput('"instances" must be a list')
    check_batch(len(instances), max_batch)
    return to_array(instances, '"instances"', no_booleans=has_no_booleans(body))


def encode_v1_response(
    name: str, version: str, labels: list[str], probabilities: NDArray[np.float32]
) -> bytes:
    """Server side: the answer body; float32 values keep their shortest repr."""
    probabilities = np.ascontiguousarray(probabilities)
    top = probabilities.argmax(axis=1).tolist()
    predictions = [
        {"label": labels[i], "probabilities": probabilities[row]} for row, i in enumerate(top)
    ]
    return dumps({"model": name, "model_version": version, "predictions": predictions})


def encode_v1_request(x: NDArray[Any]) -> bytes:
    """Client side: a batch (n, *sample_shape) as a v1 request body."""
    return dumps({"instances": np.ascontiguousarray(x)})


def decode_v1_response(body: bytes) -> tuple[NDArray[np.float32], list[str]]:
    """Client side: (probabilities (n, k) as the float32 the server computed, labels).

    The server writes float32 values with their shortest repr: parsing them as
    float64 and casting back gives the exact float32. ValueError if malformed.
    """
    try:
        predictions = orjson.loads(body)["predictions"]
        probabilities = np.array([p["probabilities"] for p in predictions], dtype=np.float64)
        labels = [str(p["label"]) for p in predictions]
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"malformed v1 answer: {exc}") from exc
    return probabilities.astype(np.float32), labels
