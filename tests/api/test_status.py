"""One error table: every failure is answered and counted under the same status, on
every inference route, through the lean path and FastAPI's routes alike."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.api.inference import INFERENCE_ROUTES
from service.api.status import ANSWERED, ErrorStatus, status_for
from service.app import create_app
from service.defense import InvalidParameters
from service.errors import (
    BadInput,
    CleanOutputsRefused,
    Conflict,
    DefenseFailure,
    Forbidden,
    MalformedBody,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    UnknownModel,
)
from service.settings import Settings
from service.tenants import CorruptTenant, StoreUnavailable, TenantExists, TenantNotFound
from service.tenants.tables import TenantRow

from ..conftest import ADMIN_TOKEN, ROW_TOY
from ..scrape import scrape

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
V1 = {"instances": [ROW_TOY]}
V2 = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW_TOY}]}
PATHS = {
    "/v1/models/{model}/predict": ("/v1/models/toy/predict", V1),
    "/v2/models/{model}/infer": ("/v2/models/toy/infer", V2),
    "/v2/models/{model}/versions/{version}/infer": ("/v2/models/toy/versions/1/infer", V2),
}
ERRORS = [
    BadInput("x"),
    MalformedBody("x"),
    PayloadTooLarge("x"),
    UnknownModel("x"),
    Unauthorized("x"),
    Forbidden("x"),
    CleanOutputsRefused("x"),
    NotFound("x"),
    Conflict("x"),
    RateLimited("x", 2.0),
    ServiceUnavailable("x"),
    DefenseFailure("x"),
    InvalidParameters("x"),
    TenantNotFound("x"),
    TenantExists("x"),
    StoreUnavailable("x"),
    CorruptTenant("x"),
    RuntimeError("a bug"),
]


def expected_body(status: ErrorStatus) -> dict[str, str]:
    return {"code": status.code, "message": status.message}


def _count(text: str, code: int) -> float:
    prefix = "dynanoise_requests_total{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and f'code="{code}"' in line
    )


@pytest.fixture(params=[True, False], ids=["lean", "fastapi"])
def client(settings: Settings, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    app = create_app(settings)
    app.fast_inference_routes = request.param  # type: ignore[attr-defined]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _key(client: TestClient, name: str = "t") -> dict[str, str]:
    created = client.post("/admin/tenants", json={"name": name}, headers=ADMIN)
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['api_key']}"}


def test_the_table_covers_every_error_the_service_defines() -> None:
    import service.errors as domain

    defined = {
        cls
        for cls in vars(domain).values()
        if isinstance(cls, type) and issubclass(cls, domain.DynanoiseError)
    } - {domain.DynanoiseError}
    assert defined <= set(ANSWERED)
    assert status_for(RuntimeError("bug")).status == 500


def test_every_route_is_in_the_cases() -> None:
    assert {route.path for route in INFERENCE_ROUTES} == set(PATHS)


@pytest.mark.parametrize("route", sorted(PATHS))
@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_the_metric_counts_the_status_the_client_got(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, route: str, error: Exception
) -> None:
    key = _key(client)
    services = client.app.state.services  # type: ignore[attr-defined]

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(services.predictor, "prediction", fail)
    path, body = PATHS[route]
    before = scrape(client)
    response = client.post(path, json=body, headers=key)
    after = scrape(client)
    expected = status_for(error)
    assert response.status_code == expected.status
    assert response.headers["x-dynanoise-error-code"] == expected.code
    error = response.json()["error"]
    assert error == (expected.message if path.startswith("/v2/") else expected_body(expected))
    assert _count(after, response.status_code) - _count(before, response.status_code) == 1
    if isinstance(error, RateLimited):
        assert response.headers["retry-after"] == "2"  # 2.0 s to wait


def test_a_corrupt_tenant_row_is_a_logged_store_fault_not_the_callers(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Reproduced: temperature -1 in the database answered 422 invalid_parameters
    (blaming the caller) while the metrics counted 500."""
    key = _key(client, "broken")
    store = client.app.state.services.store  # type: ignore[attr-defined]
    with store.engine.begin() as connection:
        connection.execute(
            update(TenantRow).where(TenantRow.name == "broken").values(temperature=-1.0)
        )
    store._invalidate()
    before = scrape(client)
    with caplog.at_level(logging.ERROR):
        response = client.post("/v1/models/toy/predict", json=V1, headers=key)
    assert response.status_code == 500
    assert response.json()["error"] == {"code": "internal_error", "message": "internal error"}
    assert _count(scrape(client), 500) - _count(before, 500) == 1
    assert "stored tenant 'broken' is corrupt" in caplog.text


def test_a_malformed_gzip_body_is_counted(client: TestClient) -> None:
    key = _key(client)
    before = scrape(client)
    response = client.post(
        "/v1/models/toy/predict",
        content=b"not gzip at all",
        headers={**key, "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "malformed_body"
    assert _count(scrape(client), 400) - _count(before, 400) == 1
    good = gzip.compress(b'{"instances": [[0.5, -1.0, 2.0, 0.25]]}')
    assert (
        client.post(
            "/v1/models/toy/predict",
            content=good,
            headers={**key, "Content-Encoding": "gzip", "Content-Type": "application/json"},
        ).status_code
        == 200
    )


def test_the_guards_413s_are_counted(client: TestClient, settings: Settings) -> None:
    key = _key(client)
    oversized = b"x" * (settings.max_body_bytes + 1)
    before = scrape(client)
    declared = client.post("/v1/models/toy/predict", content=oversized, headers=key)

    def streamed() -> Iterator[bytes]:
        yield oversized

    chunked = client.post("/v2/models/toy/infer", content=streamed(), headers=key)
    assert declared.status_code == chunked.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"
    assert _count(scrape(client), 413) - _count(before, 413) == 2
