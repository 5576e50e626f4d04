"""v2 shapes and datatypes a client may send: sizes that overflow int64, dimensions
past numpy's, datatypes of the wrong JSON type. Each is a 422 with its reason, never
a 500; a property test sends arbitrary ones, end to end and to the decoder."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import BadInput, MalformedBody
from service.protocol import V2_DTYPES, decode_v2_request

from ..conftest import ROW_TOY, Harness, bearer

INFER = "/v2/models/toy/infer"

# Dimensions near the edges: int32, uint32, int64 and uint64 limits, and values whose
# int64 product wraps (4294967296**2 is 0 mod 2**64).
_EDGE_DIMENSIONS = [0, 1, 3, 4, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64]


def _dumps(payload: Any) -> bytes:
    """JSON as any client may write it (orjson refuses integers past 64 bits)."""
    return json.dumps(payload).encode()


def _tensor(shape: Any, datatype: Any = "FP32", **fields: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, **fields}]}


def _binary(payload: dict[str, Any], raw: bytes) -> tuple[bytes, dict[str, str]]:
    header = _dumps(payload)
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_tensor([1, 4294967296, 4294967296], data=[]), '"shape"'),
        (_tensor([1, 7, 7905747460161236407, 64], data=[]), '"shape"'),
        (_tensor([1, 4], ["FP32"], data=ROW_TOY), '"datatype"'),
        (_tensor([1, 4], {"FP32": 1}, data=ROW_TOY), '"datatype"'),
        (_tensor([1] * 65, data=[1.0]), '"shape"'),
        (_tensor([0, 2**63], data=[]), '"shape"'),
        (_tensor([1, 4.0], data=ROW_TOY), '"shape"'),
        (_tensor([1, True], data=ROW_TOY), '"shape"'),
    ],
    ids=["wraps-to-zero", "huge-dimension", "datatype-list", "datatype-object", "65-dims",
         "dimension-past-int64", "float-dimension", "bool-dimension"],
)  # fmt: skip
def test_json_shapes_that_overflow_are_422_with_a_reason(
    harness: Harness, payload: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = harness.add_tenant("t")
    with caplog.at_level(logging.ERROR):
        response = harness.client.post(INFER, json=payload, headers=bearer(key))
    assert response.status_code == 422, response.text
    assert reason in response.json()["error"]
    assert not caplog.records


@pytest.mark.parametrize(
    "shape", [[1, 4294967296, 4294967296], [1, 7, 7905747460161236407, 64], [2**32, 2**32]]
)
def test_binary_shapes_that_overflow_are_422(harness: Harness, shape: list[int]) -> None:
    key = harness.add_tenant("t")
    body, headers = _binary(_tensor(shape, parameters={"binary_data_size": 0}), b"")
    response = harness.client.post(INFER, content=body, headers={**bearer(key), **headers})
    assert response.status_code == 422, response.text


_dimension = st.one_of(st.sampled_from(_EDGE_DIMENSIONS), st.integers(-(2**70), 2**70))
_shape = st.one_of(
    st.lists(_dimension, max_size=70),
    st.lists(st.one_of(st.booleans(), st.floats(allow_nan=False), st.text(max_size=2))),
    st.builds(lambda rows: [rows, 4], st.integers(-2, 20)),
    st.none(),
    st.integers(),
    st.text(max_size=4),
)
_datatype = st.one_of(
    st.sampled_from([*V2_DTYPES, "BOOL", "BYTES", "fp32", ""]),
    st.lists(st.sampled_from(list(V2_DTYPES)), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    st.integers(),
    st.booleans(),
    st.none(),
)
_value = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
_data = st.one_of(
    st.lists(_value, max_size=12),
    st.lists(st.lists(_value, max_size=5), max_size=4),
    st.lists(st.lists(st.lists(_value, max_size=2), max_size=2), max_size=2),
    _value,
)
_flag = st.one_of(st.booleans(), st.text(max_size=3), st.integers(), st.none())


@st.composite
def _requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A v2 body (JSON or with binary tensor data) and its Inference-Header-Content-Length."""
    tensor: dict[str, Any] = {"name": "input", "shape": draw(_shape), "datatype": draw(_datatype)}
    payload: dict[str, Any] = {
        "inputs": [tensor],
        "parameters": {"binary_data_output": draw(_flag)},
    }
    if not draw(st.booleans()):
        tensor["data"] = draw(_data)
        return _dumps(payload), None
    raw = draw(st.binary(max_size=64))
    declared = draw(st.one_of(st.just(len(raw)), st.integers(-1, 70), _flag))
    tensor["parameters"] = {"binary_data_size": declared}
    header = _dumps(payload)
    return header + raw, str(len(header))


def test_arbitrary_shapes_and_datatypes_never_answer_500(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    key = harness.add_tenant("t")

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(_requests())
    def check(request: tuple[bytes, str | None]) -> None:
        body, header_length = request
        headers = bearer(key)
        if header_length is not None:
            headers["Inference-Header-Content-Length"] = header_length
        response = harness.client.post(INFER, content=body, headers=headers)
        assert response.status_code in (200, 400, 422), (response.status_code, response.text)

    with caplog.at_level(logging.ERROR):
        check()
    assert not caplog.records


@settings(
    max_examples=600,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_requests())
def test_the_decoder_refuses_arbitrary_tensors_with_bad_input_only(
    request: tuple[bytes, str | None],
) -> None:
    body, header_length = request
    try:
        decoded = decode_v2_request(body, header_length, "input", max_batch=16)
    except (BadInput, MalformedBody):
        return
    assert decoded.batch.shape[0] <= 16
