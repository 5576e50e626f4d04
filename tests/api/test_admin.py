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


def test_parameter_change_takes_effect_on_next_request(clean_harness: Harness) -> None:
    harness = clean_harness  # base_variance 0: the temperature's effect alone
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
    ):
        assert path in paths
    assert "/metrics" not in paths  # served by the metrics listener, not the public app
    predict_body = paths["/v1/models/{model}/predict"]["post"]["requestBody"]["content"][
        "application/json"
    ]
    assert predict_body["schema"]["examples"]
    assert "422" in paths["/v1/models/{model}/predict"]["post"]["responses"]


@pytest.mark.parametrize("temperature", [1.0, 10.0, 0.01])
def test_a_tenant_with_clean_outputs_is_refused_unless_the_setting_allows_it(
    harness: Harness, clean_harness: Harness, temperature: float
) -> None:
    """base_variance 0 answers softmax(z / T): a bijection of the clean probabilities."""
    body = {"name": "clean", "base_variance": 0.0, "temperature": temperature}
    refused = harness.client.post("/admin/tenants", json=body, headers=harness.admin)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "invalid_parameters"
    assert "DYNANOISE_ALLOW_CLEAN_OUTPUTS" in refused.json()["error"]["message"]
    assert harness.client.get("/admin/tenants/clean", headers=harness.admin).status_code == 404
    allowed = clean_harness.client.post("/admin/tenants", json=body, headers=clean_harness.admin)
    assert allowed.status_code == 201, allowed.text


def test_updating_a_tenant_to_clean_outputs_is_refused(harness: Harness) -> None:
    harness.add_tenant("acme", base_variance=0.5)
    refused = harness.client.patch(
        "/admin/tenants/acme", json={"base_variance": 0.0}, headers=harness.admin
    )
    assert refused.status_code == 422, refused.text
    assert "DYNANOISE_ALLOW_CLEAN_OUTPUTS" in refused.json()["error"]["message"]
    tenant = harness.client.get("/admin/tenants/acme", headers=harness.admin).json()
    assert tenant["base_variance"] == 0.5 and tenant["version"] == 1


def test_a_stored_clean_tenant_keeps_refusing_new_parameters_but_not_new_limits(
    harness: Harness,
) -> None:
    from service.defense import DefenseParams
    from service.tenants import TenantStore

    with TenantStore(harness.settings.database_url) as store:
        store.create("clean", DefenseParams(base_variance=0.0))
    admin = harness.admin
    patch = harness.client.patch
    assert (
        patch("/admin/tenants/clean", json={"temperature": 2.0}, headers=admin).status_code == 422
    )
    limited = patch("/admin/tenants/clean", json={"rows_per_second": 5.0}, headers=admin)
    assert limited.status_code == 200, limited.text
    fixed = patch("/admin/tenants/clean", json={"base_variance": 0.1}, headers=admin)
    assert fixed.status_code == 200 and fixed.json()["base_variance"] == 0.1


def test_rows_per_second_is_created_shown_updated_and_cleared(harness: Harness) -> None:
    c, admin = harness.client, harness.admin
    created = c.post("/admin/tenants", json={"name": "acme", "rows_per_second": 50}, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["rows_per_second"] == 50.0
    assert created.json()["rate_limit_per_second"] is None
    assert c.get("/admin/tenants/acme", headers=admin).json()["rows_per_second"] == 50.0
    patched = c.patch("/admin/tenants/acme", json={"rows_per_second": 8.0}, headers=admin)
    assert patched.json()["rows_per_second"] == 8.0
    cleared = c.patch("/admin/tenants/acme", json={"rows_per_second": None}, headers=admin)
    assert cleared.status_code == 200 and cleared.json()["rows_per_second"] is None
    for bad in (0, -1, "many"):
        response = c.patch("/admin/tenants/acme", json={"rows_per_second": bad}, headers=admin)
        assert response.status_code == 422, bad
