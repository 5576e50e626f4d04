"""Strict parsing: values of the declared datatype only, boolean flags that are
booleans, one complete compressed stream, the Content-Types the protocols are sent
as, bounded echoes of request strings, and no redirect built from ``Host``."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson
import pytest

from service.protocol import encode_v2_request

from ..conftest import ROW_TOY, Harness, bearer

PREDICT = "/v1/models/toy/predict"
INFER = "/v2/models/toy/infer"


def _v2(data: Any, datatype: str = "FP32", **parameters: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": datatype, "data": data}]
    }
    if parameters:
        payload["parameters"] = parameters
    return payload


@pytest.mark.parametrize(
    ("data", "datatype"),
    [
        (["0.5", -1.0, 2.0, 0.25], "FP32"),
        ([True, False, True, False], "FP32"),
        ([0.5, None, 2.0, 0.25], "FP64"),
        ([[True, 1.0], [2.0, 3.0]], "FP32"),  # nested: the general decoder
        ([0.7, 1, 2, 3], "INT32"),
        ([1.0, 1, 2, 3], "INT64"),
        ([True, 1, 2, 3], "INT32"),
        ([300, 1, 2, 3], "INT8"),
        ([-1, 1, 2, 3], "UINT8"),
    ],
)
def test_v2_json_data_of_another_type_is_422(
    harness: Harness, data: list[Any], datatype: str
) -> None:
    key = harness.add_tenant("t")
    response = harness.client.post(INFER, json=_v2(data, datatype), headers=bearer(key))
    assert response.status_code == 422, response.text
    assert response.headers["x-dynanoise-error-code"] == "bad_input"


@pytest.mark.parametrize(
    ("data", "datatype"),
    [(ROW_TOY, "FP32"), ([1, 2, 3, 4], "FP32"), ([1, -2, 3, 4], "INT32"), ([1, 2, 3, 4], "UINT8")],
)
def test_v2_json_data_of_the_declared_type_is_served(
    harness: Harness, data: list[Any], datatype: str
) -> None:
    key = harness.add_tenant("t")
    response = harness.client.post(INFER, json=_v2(data, datatype), headers=bearer(key))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("instances", [[["0.5", 1, 2, 3]], [[True, 1.0, 2.0, 3.0]]])
def test_v1_instances_must_be_numbers(harness: Harness, instances: list[Any]) -> None:
    key = harness.add_tenant("t")
    response = harness.client.post(PREDICT, json={"instances": instances}, headers=bearer(key))
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("flag", ["no", "false", 0, 1, None, []])
def test_binary_output_flags_must_be_booleans(harness: Harness, flag: Any) -> None:
    key = harness.add_tenant("t")
    top_level = _v2(ROW_TOY, binary_data_output=flag)
    per_output = {
        **_v2(ROW_TOY),
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": flag}}],
    }
    for payload in (top_level, per_output):
        response = harness.client.post(INFER, json=payload, headers=bearer(key))
        assert response.status_code == 422, response.text
        assert "must be true or false" in response.json()["error"]


def test_binary_output_flag_false_answers_json(harness: Harness) -> None:
    key = harness.add_tenant("t")
    payload = _v2(ROW_TOY, binary_data_output=False)
    response = harness.client.post(INFER, json=payload, headers=bearer(key))
    assert response.status_code == 200 and "data" in response.json()["outputs"][0]


_BODY = orjson.dumps({"instances": [ROW_TOY]})


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(_BODY) + b"trailing garbage"),
        ("gzip", gzip.compress(_BODY) + gzip.compress(_BODY)),
        ("gzip", gzip.compress(_BODY)[:-6]),
        ("deflate", zlib.compress(_BODY) + b"\x00"),
        ("deflate", zlib.compress(_BODY)[:-3]),
    ],
    ids=["gzip-trailing", "gzip-two-members", "gzip-truncated", "deflate-trailing",
         "deflate-truncated"],
)  # fmt: skip
def test_compressed_bodies_must_be_one_complete_stream(
    harness: Harness, encoding: str, body: bytes
) -> None:
    key = harness.add_tenant("t")
    headers = {**bearer(key), "Content-Encoding": encoding}
    response = harness.client.post(PREDICT, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "malformed_body"
    headers["Content-Type"] = "application/json"
    good = gzip.compress(_BODY) if encoding == "gzip" else zlib.compress(_BODY)
    assert harness.client.post(PREDICT, content=good, headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("path", "content_type", "binary", "status"),
    [
        (PREDICT, None, False, 200),  # requests/httpx with content=, geventhttpclient
        (PREDICT, "application/json", False, 200),
        (PREDICT, "Application/JSON; charset=utf-8", False, 200),
        (PREDICT, "application/x-www-form-urlencoded", False, 415),  # curl -d without -H
        (PREDICT, "text/plain", False, 415),
        (PREDICT, "application/octet-stream", False, 415),
        (INFER, None, False, 200),
        (INFER, "application/json", False, 200),
        (INFER, "application/octet-stream", False, 200),  # tritonclient.http.aio (aiohttp)
        (INFER, "multipart/form-data; boundary=x", False, 415),
        (INFER, None, True, 200),  # tritonclient.http (geventhttpclient) sends none
        (INFER, "application/octet-stream", True, 200),  # kserve's InferenceRESTClient
        (INFER, "application/json", True, 415),
        (INFER, "text/plain", True, 415),
    ],
)
def test_content_types_the_protocols_are_sent_as(
    harness: Harness, path: str, content_type: str | None, binary: bool, status: int
) -> None:
    key = harness.add_tenant("t")
    if path == PREDICT:
        body, headers = _BODY, {}
    else:
        body, headers = encode_v2_request([ROW_TOY], "input", datatype="FP32", binary=binary)
        headers.pop("Content-Type")
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = harness.client.post(path, content=body, headers={**bearer(key), **headers})
    assert response.status_code == status, response.text
    if status == 415:
        assert response.headers["x-dynanoise-error-code"] == "unsupported_media_type"


def test_an_unauthenticated_request_is_401_whatever_its_content_type(harness: Harness) -> None:
    response = harness.client.post(PREDICT, content=b"x", headers={"Content-Type": "text/plain"})
    assert response.status_code == 401


def test_error_messages_echo_request_strings_bounded(harness: Harness) -> None:
    key = harness.add_tenant("t")
    long = "v" * 60_000
    response = harness.client.post(
        f"/v2/models/toy/versions/{long}/infer", json=_v2(ROW_TOY), headers=bearer(key)
    )
    assert response.status_code == 404
    message = response.json()["error"]
    assert "v" * 60 in message and "v" * 64 not in message and message.endswith("...")
    response = harness.client.post(
        PREDICT,
        content=_BODY,
        headers={**bearer(key), "Content-Type": "text/" + "x" * 10_000},
    )
    assert response.status_code == 415 and len(response.text) < 300


def test_no_error_message_is_unbounded(harness: Harness) -> None:
    key = harness.add_tenant("t")
    for path in (f"/v2/models/{'m' * 60_000}/infer", f"/v1/models/{'m' * 60_000}"):
        response = harness.client.request(
            "POST" if path.endswith("infer") else "GET",
            path,
            json=_v2(ROW_TOY),
            headers=bearer(key),
        )
        assert response.status_code == 404
        assert len(response.content) < 1200


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", INFER + "/"), ("POST", PREDICT + "/"), ("GET", "/v2/health/live/")],
)
def test_a_trailing_slash_is_404_not_a_redirect_to_the_host_sent(
    harness: Harness, method: str, path: str
) -> None:
    key = harness.add_tenant("t")
    response = harness.client.request(
        method,
        path,
        json=_v2(ROW_TOY),
        headers={**bearer(key), "Host": "attacker.example"},
        follow_redirects=False,
    )
    assert response.status_code == 404
    assert "location" not in response.headers
