"""Admin API: tenant CRUD, key handling, isolation between tenants."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

from ..conftest import ROW_TOY, Harness, bearer


def test_create_list_update_delete(harness: Harness) -> None:
    c, admin = harness.client, harness.admin
    created = c.post(
        "/admin/tenants", json={"name": "clinic", "noise_mode": "keyed"}, headers=admin
    )
    assert created.status_code == 201
    body = created.json()
    assert body["api_key"].startswith("dn_")
    assert body["noise_mode"] == "keyed" and body["base_variance"] == 0.3
    assert "secret" not in created.text and "hash" not in created.text

    listed = c.get("/admin/tenants", headers=admin).json()
    assert [t["name"] for t in listed] == ["clinic"]
    assert "api_key" not in listed[0]

    patched = c.patch(
        "/admin/tenants/clinic", json={"temperature": 3.0, "allowed_models": ["toy"]}, headers=admin
    )
    assert patched.status_code == 200
    assert patched.json()["temperature"] == 3.0 and patched.json()["allowed_models"] == ["toy"]
    assert patched.json()["version"] == body["version"] + 1

    assert c.delete("/admin/tenants/clinic", headers=admin).status_code == 204
    assert c.get("/admin/tenants/clinic", headers=admin).status_code == 404
    assert c.delete("/admin/tenants/clinic", headers=admin).status_code == 404


def test_parameter_change_takes_effect_on_next_request(harness: Harness) -> None:
    key = harness.add_tenant("acme", base_variance=0.0, temperature=1.0)
    first = harness.client.post(
        "/v1/models/toy/predict", json={"instances": [ROW_TOY]}, headers=bearer(key)
    ).json()
    harness.client.patch("/admin/tenants/acme", json={"temperature": 100.0}, headers=harness.admin)
    second = harness.client.post(
        "/v1/models/toy/predict", json={"instances": [ROW_TOY]}, headers=bearer(key)
    ).json()
    assert max(second["predictions"][0]["probabilities"]) < max(
        first["predictions"][0]["probabilities"]
    )


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "base_variance": -1},
        {"name": "x", "temperature": 0},
        {"name": "x", "ensemble_size": 0},
        {"name": "x", "ensemble_size": 65},
        {"name": "x", "sensitivity": "vibes"},
        {"name": "x", "noise_mode": "sometimes"},
        {"name": "x", "allowed_models": ["no-such-model"]},
        {"name": "Bad Name!"},
        {"name": "x", "unknown_field": 1},
        {},
    ],
)
def test_invalid_tenant_parameters_are_422(harness: Harness, body: dict) -> None:
    response = harness.client.post("/admin/tenants", json=body, headers=harness.admin)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"]


def test_invalid_update_is_422_and_null_params_refused(harness: Harness) -> None:
    harness.add_tenant("acme")
    for body in ({"temperature": -1}, {"temperature": None}, {"ensemble_size": 100}):
        assert (
            harness.client.patch(
                "/admin/tenants/acme", json=body, headers=harness.admin
            ).status_code
            == 422
        )


def test_duplicate_tenant_is_409(harness: Harness) -> None:
    harness.add_tenant("acme")
    response = harness.client.post("/admin/tenants", json={"name": "acme"}, headers=harness.admin)
    assert response.status_code == 409


def test_rotated_key_stops_working_at_once(harness: Harness) -> None:
    old = harness.add_tenant("acme")
    rotated = harness.client.post("/admin/tenants/acme/rotate-key", headers=harness.admin)
    new = rotated.json()["api_key"]
    assert new != old
    url = "/v1/models/toy/predict"
    assert (
        harness.client.post(url, json={"instances": [ROW_TOY]}, headers=bearer(old)).status_code
        == 401
    )
    assert (
        harness.client.post(url, json={"instances": [ROW_TOY]}, headers=bearer(new)).status_code
        == 200
    )


@pytest.mark.parametrize("token", [None, "wrong", "dn_tenant_key"])
def test_admin_needs_the_admin_token(harness: Harness, token: str | None) -> None:
    tenant_key = harness.add_tenant("acme")
    headers = {} if token is None else bearer(tenant_key if token == "dn_tenant_key" else token)
    for method, url in (
        ("get", "/admin/tenants"),
        ("post", "/admin/tenants"),
        ("delete", "/admin/tenants/acme"),
        ("patch", "/admin/tenants/acme"),
        ("post", "/admin/tenants/acme/rotate-key"),
    ):
        response = harness.client.request(method, url, headers=headers, json={"name": "evil"})
        assert response.status_code == 401, (method, url)


def test_admin_api_is_off_without_a_token(settings: Settings) -> None:
    off = settings.model_copy(update={"admin_token": None})
    with TestClient(create_app(off)) as client:
        response = client.get("/admin/tenants", headers=bearer("anything"))
        assert response.status_code == 403
        assert "disabled" in response.json()["error"]["message"]


def test_one_tenants_key_cannot_be_used_as_another(harness: Harness) -> None:
    key_a = harness.add_tenant("a", allowed_models=["toy"])
    harness.add_tenant("b", allowed_models=["wide"])
    # a's key only ever acts as a: it can use toy, never b's wide model.
    assert (
        harness.client.post(
            "/v1/models/toy/predict", json={"instances": [ROW_TOY]}, headers=bearer(key_a)
        ).status_code
        == 200
    )
    assert (
        harness.client.post(
            "/v1/models/wide/predict", json={"instances": [[0.0] * 6]}, headers=bearer(key_a)
        ).status_code
        == 403
    )
    # and a tampered key (right id, wrong secret) is refused
    tampered = key_a[:-4] + ("AAAA" if not key_a.endswith("AAAA") else "BBBB")
    assert (
        harness.client.post(
            "/v1/models/toy/predict", json={"instances": [ROW_TOY]}, headers=bearer(tampered)
        ).status_code
        == 401
    )


def test_openapi_documents_every_route_with_examples(harness: Harness) -> None:
    schema = harness.client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/models/{model}/predict",
        "/v2/models/{model}/infer",
        "/admin/tenants",
        "/metrics",
    ):
        assert path in paths
    predict_body = paths["/v1/models/{model}/predict"]["post"]["requestBody"]["content"][
        "application/json"
    ]
    assert predict_body["schema"]["examples"]
    assert "422" in paths["/v1/models/{model}/predict"]["post"]["responses"]
