"""The one table of tensor datatypes: Open Inference Protocol names <-> numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

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
"""Datatypes accepted for numeric input tensors, little-endian on the wire."""

MANIFEST_TO_V2: dict[str, str] = {
    "float32": "FP32",
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
}
"""A model manifest's input dtype -> its v2 datatype (the dtypes a model may declare)."""


def v2_datatype(dtype: np.dtype[Any] | str) -> str:
    """The v2 name of a numpy dtype (ValueError for one the protocol cannot carry)."""
    wanted = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    for name, candidate in V2_DTYPES.items():
        if candidate == wanted:
            return name
    raise ValueError(f"no Open Inference Protocol datatype for {dtype}")
