"""Open Inference Protocol v2 over the app: metadata, health, JSON and binary tensors."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.protocol import decode_v2_response, encode_v2_request

from ..conftest import Harness, bearer

ROWS = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)


def _json_request(data: object, shape: list[int], datatype: str = "FP32", **extra: object) -> dict:
    return {
        "inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}],
        **extra,
    }


def test_server_and_model_metadata(harness: Harness) -> None:
    c = harness.client
    assert c.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert c.get("/v2/health/live").status_code == 200
    assert c.get("/v2/health/ready").status_code == 200
    meta = c.get("/v2/models/toy").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert c.get("/v2/models/toy/ready").status_code == 200
    assert c.get("/v2/models/nope/ready").status_code == 404
    assert c.get("/v2/models/nope").status_code == 404


@pytest.mark.parametrize("nested", [False, True])
def test_json_infer(harness: Harness, nested: bool) -> None:
    key = harness.add_tenant("acme")
    data = ROWS.tolist() if nested else ROWS.ravel().tolist()
    response = harness.client.post(
        "/v2/models/toy/infer", json=_json_request(data, [2, 4], id="req-7"), headers=bearer(key)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-7" and body["model_name"] == "toy"
    (output,) = body["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [2, 3]
    p = np.array(output["data"]).reshape(2, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_binary_infer_both_ways(harness: Harness) -> None:
    key = harness.add_tenant("acme", noise_mode="keyed")
    body, headers = encode_v2_request(ROWS, "input", datatype="FP32")
    response = harness.client.post(
        "/v2/models/toy/infer", content=body, headers={**bearer(key), **headers}
    )
    assert response.status_code == 200, response.text
    json_size = int(response.headers["Inference-Header-Content-Length"])
    (output,) = orjson.loads(response.content[:json_size])["outputs"]
    assert output["parameters"]["binary_data_size"] == 2 * 3 * 4
    p = decode_v2_response(response.content, response.headers["Inference-Header-Content-Length"])
    assert p.shape == (2, 3)
    # Keyed noise: the JSON path gives the same numbers for the same rows.
    json_answer = harness.client.post(
        "/v2/models/toy/infer",
        json=_json_request(ROWS.ravel().tolist(), [2, 4]),
        headers=bearer(key),
    ).json()
    np.testing.assert_array_equal(
        p.ravel(), np.array(json_answer["outputs"][0]["data"], dtype=np.float32)
    )


def test_versioned_infer_route(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    body = _json_request(ROWS.ravel().tolist(), [2, 4])
    assert (
        harness.client.post(
            "/v2/models/toy/versions/1/infer", json=body, headers=bearer(key)
        ).status_code
        == 200
    )
    assert (
        harness.client.post(
            "/v2/models/toy/versions/9/infer", json=body, headers=bearer(key)
        ).status_code
        == 404
    )


@pytest.mark.parametrize(
    ("request_body", "status"),
    [
        ({"inputs": []}, 422),
        ({"inputs": "x"}, 422),
        (_json_request([1, 2, 3, 4], [1, 4], "BYTES"), 422),
        (_json_request([1, 2, 3, 4], [1, 4], "BOOL"), 422),
        (_json_request([1, 2, 3], [1, 4]), 422),
        (_json_request([1, 2, 3, 4], [1, 2, 2]), 422),
        (_json_request([1, 2, 3, 4], "1,4"), 422),
        (_json_request([], [0, 4]), 422),
        (_json_request([0.0] * 68, [17, 4]), 422),
        (_json_request(["a", "b", "c", "d"], [1, 4]), 422),
        (
            {
                "inputs": [
                    {"name": "other", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                ]
            },
            422,
        ),
        (_json_request([1, 2, 3, 4], [1, 4], outputs=[{"name": "logits"}]), 422),
    ],
)
def test_bad_v2_requests_get_4xx_json(harness: Harness, request_body: dict, status: int) -> None:
    key = harness.add_tenant("acme")
    response = harness.client.post("/v2/models/toy/infer", json=request_body, headers=bearer(key))
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    assert response.headers["x-dynanoise-error-code"]


@pytest.mark.parametrize(
    ("values", "header_length", "declared"),
    [
        (np.array([[1, 2, 3, np.nan]], dtype=np.float32), None, None),  # NaN in binary data
        (np.array([[1, 2, 3, np.inf]], dtype=np.float32), None, None),  # Inf in binary data
        (np.array([[1, 2, 3]], dtype=np.float32), None, None),  # too few bytes for the shape
        (ROWS[:1], "abc", None),  # header length not a number
        (ROWS[:1], "999999", None),  # header length beyond the body
        (ROWS[:1], None, 7),  # binary_data_size disagrees with the bytes sent
    ],
)
def test_bad_binary_requests_get_422(harness: Harness, values, header_length, declared) -> None:  # type: ignore[no-untyped-def]
    key = harness.add_tenant("acme")
    raw = values.tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": declared or len(raw)},
                }
            ]
        }
    )
    response = harness.client.post(
        "/v2/models/toy/infer",
        content=header + raw,
        headers={
            **bearer(key),
            "Inference-Header-Content-Length": header_length or str(len(header)),
        },
    )
    assert response.status_code == 422, response.text
