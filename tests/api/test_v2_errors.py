"""Error bodies follow the route's protocol: the Open Inference Protocol's
``{"error": "<message>"}`` on every /v2 route, ``{"error": {"code", "message"}}`` on
v1 and /admin; the code is in the X-Dynanoise-Error-Code header on both."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from service.api.status import ERROR_CODE_HEADER

from ..conftest import ROW_TOY, Harness, bearer

V2_BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW_TOY}]}
WRONG_KEY = bearer("dn_not-a-key")

Request = Callable[[Harness, str], httpx.Response]

V2_CASES: dict[str, tuple[Request, int, str]] = {
    "infer-401": (
        lambda h, _: h.client.post("/v2/models/toy/infer", json=V2_BODY, headers=WRONG_KEY),
        401,
        "unauthorized",
    ),
    "infer-404": (
        lambda h, key: h.client.post("/v2/models/nope/infer", json=V2_BODY, headers=bearer(key)),
        404,
        "unknown_model",
    ),
    "versioned-infer-422": (
        lambda h, key: h.client.post(
            "/v2/models/toy/versions/1/infer", json={"inputs": []}, headers=bearer(key)
        ),
        422,
        "bad_input",
    ),
    "infer-400": (
        lambda h, key: h.client.post(
            "/v2/models/toy/infer",
            content=b"{not json",
            headers={**bearer(key), "Content-Type": "application/json"},
        ),
        400,
        "malformed_body",
    ),
    "infer-413": (
        lambda h, key: h.client.post(
            "/v2/models/toy/infer",
            content=b" " * (h.settings.max_body_bytes + 1),
            headers={**bearer(key), "Content-Type": "application/json"},
        ),
        413,
        "payload_too_large",
    ),
    "metadata-404": (lambda h, _: h.client.get("/v2/models/nope"), 404, "unknown_model"),
    "model-ready-404": (lambda h, _: h.client.get("/v2/models/nope/ready"), 404, "unknown_model"),
    "unknown-v2-route-404": (lambda h, _: h.client.get("/v2/nothing/here"), 404, "not_found"),
    "health-405": (lambda h, _: h.client.post("/v2/health/live"), 405, "method_not_allowed"),
    "repository-401": (
        lambda h, _: h.client.post("/v2/repository/index", headers=WRONG_KEY),
        401,
        "unauthorized",
    ),
}

OTHER_CASES: dict[str, tuple[Request, int, str]] = {
    "v1-401": (
        lambda h, _: h.client.post(
            "/v1/models/toy/predict", json={"instances": [ROW_TOY]}, headers=WRONG_KEY
        ),
        401,
        "unauthorized",
    ),
    "v1-404": (
        lambda h, key: h.client.post(
            "/v1/models/nope/predict", json={"instances": [ROW_TOY]}, headers=bearer(key)
        ),
        404,
        "unknown_model",
    ),
    "admin-404": (
        lambda h, _: h.client.get("/admin/tenants/nobody", headers=h.admin),
        404,
        "not_found",
    ),
    "v1-413": (
        lambda h, key: h.client.post(
            "/v1/models/toy/predict",
            content=b" " * (h.settings.max_body_bytes + 1),
            headers={**bearer(key), "Content-Type": "application/json"},
        ),
        413,
        "payload_too_large",
    ),
}


@pytest.mark.parametrize("case", sorted(V2_CASES))
def test_v2_errors_are_a_message_string_with_the_code_in_a_header(
    harness: Harness, case: str
) -> None:
    send, status, code = V2_CASES[case]
    response = send(harness, harness.add_tenant("t"))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert response.headers[ERROR_CODE_HEADER] == code


@pytest.mark.parametrize("case", sorted(OTHER_CASES))
def test_v1_and_admin_errors_keep_code_and_message(harness: Harness, case: str) -> None:
    send, status, code = OTHER_CASES[case]
    response = send(harness, harness.add_tenant("t"))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert response.headers[ERROR_CODE_HEADER] == code


def test_the_lean_path_and_fastapis_routes_answer_v2_errors_alike(harness: Harness) -> None:
    key = harness.add_tenant("t")
    app = harness.client.app
    answers = []
    for lean in (True, False):
        app.fast_inference_routes = lean  # type: ignore[attr-defined]
        app.middleware_stack = None  # type: ignore[attr-defined]  # rebuilt on next call
        response = harness.client.post(
            "/v2/models/toy/infer", json={"inputs": []}, headers=bearer(key)
        )
        answers.append((response.status_code, response.json(), response.headers[ERROR_CODE_HEADER]))
    assert answers[0] == answers[1]
