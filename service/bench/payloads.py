"""Request bodies the load generator sends: the same rows in every wire format."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson


@dataclass(frozen=True)
class Payload:
    """One HTTP request body and the headers that go with it."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def sample_rows(rows: int, features: int, seed: int = 0) -> np.ndarray:
    """Image-like rows in [0, 1], rounded to 4 decimals as a client would send them."""
    rng = np.random.default_rng(seed)
    return rng.random((rows, features), dtype=np.float32).round(4)


def v1_json(rows: np.ndarray) -> Payload:
    """``{"instances": [[...], ...]}``: v1, the naive app and the BentoML service."""
    return Payload(orjson.dumps({"instances": rows.tolist()}), {"Content-Type": "application/json"})


def v2_json(rows: np.ndarray, input_name: str = "input") -> Payload:
    """Open Inference Protocol v2, JSON tensor data (flat, row-major)."""
    tensor = {
        "name": input_name,
        "shape": list(rows.shape),
        "datatype": "FP32",
        "data": rows.ravel().tolist(),
    }
    return Payload(orjson.dumps({"inputs": [tensor]}), {"Content-Type": "application/json"})


def v2_binary(rows: np.ndarray, input_name: str = "input") -> Payload:
    """v2 with the binary tensor data extension, both ways (raw FP32 in and out)."""
    raw = np.ascontiguousarray(rows, dtype="<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    )
    return Payload(
        header + raw,
        {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
