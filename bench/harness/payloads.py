"""Request bodies the load generator sends: the same rows in every wire format, written
by the product's own wire codec (`service.protocol`), as a client would."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.protocol import encode_v1_request, encode_v2_request


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
    return Payload(encode_v1_request(rows), {"Content-Type": "application/json"})


def v2_json(rows: np.ndarray, input_name: str = "input") -> Payload:
    """Open Inference Protocol v2, JSON tensor data (flat, row-major)."""
    body, headers = encode_v2_request(
        rows, input_name, datatype="FP32", binary=False, binary_output=False
    )
    return Payload(body, headers)


def v2_binary(rows: np.ndarray, input_name: str = "input") -> Payload:
    """v2 with the binary tensor data extension, both ways (raw FP32 in and out)."""
    body, headers = encode_v2_request(rows, input_name, datatype="FP32")
    return Payload(body, headers)
