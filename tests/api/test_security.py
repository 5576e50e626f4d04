"""Security properties of the HTTP surface: keys at rest, the admin gate, request
limits, secrets and internals never in a response, security headers everywhere,
and isolation between tenants."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from service.api.metrics_listener import metrics_app
from service.api.middleware import SECURITY_HEADERS
from service.app import create_app
from service.settings import Settings
from service.tenants import StoreUnavailable

from ..conftest import ADMIN_TOKEN, ROW_TOY, Harness, bearer
from ..reliability.leaks import internals_in, leaked
from ..scrape import scrape_response

PREDICT = "/v1/models/toy/predict"
INFER = "/v2/models/toy/infer"
BODY = {"instances": [ROW_TOY]}
V2_BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW_TOY}]}


def _sqlite_path(settings: Settings) -> Path:
    return Path(settings.database_url.removeprefix("sqlite:///"))


def _every_stored_value(path: Path) -> Iterator[bytes]:
    with sqlite3.connect(path) as connection:
        query = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        for (table,) in connection.execute(query).fetchall():
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    yield value if isinstance(value, bytes) else str(value).encode()


# --- keys at rest ----------------------------------------------------------------


def test_api_keys_are_stored_only_as_sha256_hashes(harness: Harness) -> None:
    current = [harness.add_tenant(name) for name in ("a", "b", "c")]
    replaced = current.pop()
    current.append(
        harness.client.post("/admin/tenants/c/rotate-key", headers=harness.admin).json()["api_key"]
    )
    stored = list(_every_stored_value(_sqlite_path(harness.settings)))
    for key in [*current, replaced]:
        secret_part = key.rsplit("_", 1)[1].encode()
        for value in stored:
            assert key.encode() not in value
            assert secret_part not in value
    # What is stored is the hash of each current key (and nothing of a replaced one).
    assert {hashlib.sha256(k.encode()).hexdigest().encode() for k in current} <= set(stored)
    assert hashlib.sha256(replaced.encode()).hexdigest().encode() not in stored


def test_keys_and_admin_token_are_compared_in_constant_time(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = harness.add_tenant("acme")
    calls: list[tuple[Any, Any]] = []
    original = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert harness.client.post(PREDICT, json=BODY, headers=bearer(forged)).status_code == 401
    assert calls, "the tenant key was not checked with hmac.compare_digest"
    calls.clear()
    assert harness.client.get("/admin/tenants", headers=bearer("nope")).status_code == 401
    assert calls, "the admin token was not checked with hmac.compare_digest"


# --- the admin gate -------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
def test_admin_api_is_off_without_a_token_whatever_is_sent(
    settings: Settings, token: str | None
) -> None:
    off = Settings(**{**settings.model_dump(), "admin_token": token})
    with TestClient(create_app(off)) as client:
        for headers in ({}, bearer(""), bearer("anything"), bearer(ADMIN_TOKEN)):
            for method, url in (
                ("get", "/admin/tenants"),
                ("post", "/admin/tenants"),
                ("patch", "/admin/tenants/x"),
                ("delete", "/admin/tenants/x"),
                ("post", "/admin/tenants/x/rotate-key"),
            ):
                response = client.request(method, url, headers=headers, json={"name": "x"})
                assert response.status_code == 403, (method, url, headers)
                assert response.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    "make_headers",
    [
        lambda: bearer(ADMIN_TOKEN[:-1]),
        lambda: bearer(ADMIN_TOKEN + "x"),
        lambda: bearer(ADMIN_TOKEN.upper()),
        lambda: {"Authorization": f"Basic {ADMIN_TOKEN}"},
        lambda: {"Authorization": ADMIN_TOKEN},
        lambda: {"X-Admin-Token": ADMIN_TOKEN},
    ],
)
def test_only_the_exact_admin_token_as_bearer_opens_the_admin_api(
    harness: Harness, make_headers: Callable[[], dict[str, str]]
) -> None:
    response = harness.client.get("/admin/tenants", headers=make_headers())
    assert response.status_code == 401
    assert harness.client.get(f"/admin/tenants?token={ADMIN_TOKEN}").status_code == 401


def test_the_admin_token_is_not_a_tenant_key(harness: Harness) -> None:
    harness.add_tenant("acme")
    assert harness.client.post(PREDICT, json=BODY, headers=harness.admin).status_code == 401
    assert harness.client.post(INFER, json=V2_BODY, headers=harness.admin).status_code == 401


def test_a_tenant_key_can_neither_administer_nor_reach_other_models(harness: Harness) -> None:
    key_a = harness.add_tenant("a", allowed_models=["toy"])
    harness.add_tenant("b")
    c = harness.client
    for method, url in (
        ("patch", "/admin/tenants/a"),  # not even its own tenant
        ("patch", "/admin/tenants/b"),
        ("post", "/admin/tenants/b/rotate-key"),
        ("delete", "/admin/tenants/b"),
        ("get", "/admin/tenants/b"),
    ):
        response = c.request(method, url, headers=bearer(key_a), json={"allowed_models": None})
        assert response.status_code == 401, (method, url)
    wide_v2 = {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": [0] * 6}]}
    for url, body in (
        ("/v1/models/wide/predict", {"instances": [[0.0] * 6]}),
        ("/v2/models/wide/infer", wide_v2),
        ("/v2/models/wide/versions/1/infer", wide_v2),
    ):
        response = c.post(url, json=body, headers=bearer(key_a))
        assert response.status_code == 403, url
    # b was not touched by any of that
    assert c.get("/admin/tenants/b", headers=harness.admin).json()["version"] == 1


def test_rotated_and_deleted_keys_stop_at_once_in_every_worker(settings: Settings) -> None:
    # Two app instances on one database stand for two workers (cache TTL 0 here;
    # with DYNANOISE_TENANT_CACHE_SECONDS other workers follow within that time).
    with (
        TestClient(create_app(settings)) as worker_a,
        TestClient(create_app(settings)) as worker_b,
    ):
        admin = bearer(ADMIN_TOKEN)
        old = worker_a.post("/admin/tenants", json={"name": "acme"}, headers=admin).json()[
            "api_key"
        ]
        doomed = worker_a.post("/admin/tenants", json={"name": "gone"}, headers=admin).json()[
            "api_key"
        ]
        for worker in (worker_a, worker_b):
            assert worker.post(PREDICT, json=BODY, headers=bearer(old)).status_code == 200
        new = worker_b.post("/admin/tenants/acme/rotate-key", headers=admin).json()["api_key"]
        worker_b.delete("/admin/tenants/gone", headers=admin)
        for worker in (worker_a, worker_b):
            assert worker.post(PREDICT, json=BODY, headers=bearer(old)).status_code == 401
            assert worker.post(INFER, json=V2_BODY, headers=bearer(old)).status_code == 401
            assert worker.post(PREDICT, json=BODY, headers=bearer(doomed)).status_code == 401
            assert worker.post(PREDICT, json=BODY, headers=bearer(new)).status_code == 200


# --- request limits ---------------------------------------------------------------------


@pytest.mark.parametrize("url", [PREDICT, INFER, "/admin/tenants"])
def test_every_body_over_the_limit_is_413(harness: Harness, url: str) -> None:
    key = harness.add_tenant("acme")
    limit = harness.settings.max_body_bytes
    headers = {**bearer(key), "Content-Type": "application/json"}
    if url.startswith("/admin"):
        headers = {**harness.admin, "Content-Type": "application/json"}
    declared = harness.client.post(url, content=b"x" * (limit + 1), headers=headers)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for _ in range(limit // 4096 + 2):
            yield b" " * 4096

    streamed = harness.client.post(url, content=chunks(), headers=headers)
    for response in (declared, streamed):
        assert response.status_code == 413, url
        assert response.headers["x-dynanoise-error-code"] == "payload_too_large"
        assert response.json()["error"]
        for name, value in SECURITY_HEADERS:
            assert response.headers[name.decode()] == value.decode()


def test_a_body_at_the_limit_is_read(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    body = orjson.dumps(BODY)
    padded = body[:-1] + b" " * (harness.settings.max_body_bytes - len(body)) + b"}"
    assert len(padded) == harness.settings.max_body_bytes
    response = harness.client.post(
        PREDICT, content=padded, headers={**bearer(key), "Content-Type": "application/json"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compression_bombs_are_413_on_v1_and_v2(harness: Harness, encoding: str) -> None:
    key = harness.add_tenant("acme")
    raw = b" " * (20 * harness.settings.max_body_bytes)
    bomb = gzip.compress(raw) if encoding == "gzip" else __import__("zlib").compress(raw)
    assert len(bomb) < harness.settings.max_body_bytes
    for url in (PREDICT, INFER):
        response = harness.client.post(
            url,
            content=bomb,
            headers={
                **bearer(key),
                "Content-Encoding": encoding,
                "Content-Type": "application/json",
            },
        )
        assert response.status_code == 413, url


def test_batches_over_max_batch_are_refused_on_v1_and_v2(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    n = harness.settings.max_batch
    for size, expected in ((n, 200), (n + 1, 422)):
        v1 = harness.client.post(PREDICT, json={"instances": [ROW_TOY] * size}, headers=bearer(key))
        v2 = harness.client.post(
            INFER,
            json={
                "inputs": [
                    {
                        "name": "input",
                        "shape": [size, 4],
                        "datatype": "FP32",
                        "data": ROW_TOY * size,
                    }
                ]
            },
            headers=bearer(key),
        )
        assert (v1.status_code, v2.status_code) == (expected, expected), size


# --- what responses and logs never carry -----------------------------------------------


def test_the_noise_secret_never_leaves_the_server(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c, admin = harness.client, harness.admin
    bodies: list[tuple[int, bytes]] = []

    def keep(response: object) -> None:
        bodies.append((response.status_code, response.content))  # type: ignore[attr-defined]

    created = c.post(
        "/admin/tenants", json={"name": "clinic", "noise_mode": "keyed"}, headers=admin
    )
    keep(created)
    key = created.json()["api_key"]
    for response in (
        c.get("/admin/tenants", headers=admin),
        c.get("/admin/tenants/clinic", headers=admin),
        c.patch("/admin/tenants/clinic", json={"temperature": 2.0}, headers=admin),
        c.patch("/admin/tenants/clinic", json={"temperature": -2.0}, headers=admin),
        c.patch("/admin/tenants/clinic", json={"noise_secret": "00"}, headers=admin),
        c.post("/admin/tenants", json={"name": "clinic"}, headers=admin),
        c.post(PREDICT, json=BODY, headers=bearer(key)),
        c.post(PREDICT, json={"instances": [[1.0]]}, headers=bearer(key)),
        c.post(INFER, json=V2_BODY, headers=bearer(key)),
        scrape_response(c),  # the metrics listener's answer, with every tenant's series
        c.get("/openapi.json"),
        c.get("/v1/models"),
        c.get("/v2/models/toy"),
    ):
        keep(response)
    keep(c.post("/admin/tenants/clinic/rotate-key", headers=admin))
    secret = harness.client.app.state.services.store.get("clinic").noise_secret  # type: ignore[attr-defined]
    assert len(secret) >= 16
    for status, body in bodies:
        assert not leaked(body, [secret])
        if status < 400:  # an error may name the field a client sent; an answer never
            assert b"noise_secret" not in body and b"key_hash" not in body
    logs = "\n".join(record.getMessage() for record in caplog.records).encode()
    assert not leaked(logs, [secret])
    assert key.encode() not in logs


def _bad_requests(c: TestClient, key: str, admin: dict[str, str]) -> list[object]:
    auth = bearer(key)
    json_headers = {**auth, "Content-Type": "application/json"}
    return [
        c.post(PREDICT, content=b"{nope", headers=json_headers),
        c.post(PREDICT, content=b"\xff\xfe\x00", headers=json_headers),
        c.post(PREDICT, json={"instances": [["a", "b", "c", "d"]]}, headers=auth),
        c.post(PREDICT, json={"instances": [[1e39, 0, 0, 0]]}, headers=auth),
        c.post(PREDICT, json={"instances": [[[[[[1]]]]]]}, headers=auth),
        c.post(PREDICT, content=b"x", headers={**json_headers, "Content-Encoding": "br"}),
        c.post(PREDICT, content=b"x", headers={**json_headers, "Content-Encoding": "gzip"}),
        c.post("/v1/models/../../etc/passwd/predict", json=BODY, headers=auth),
        c.post("/v1/models/%00/predict", json=BODY, headers=auth),
        c.post(
            INFER,
            json={"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1]}]},
            headers=auth,
        ),
        c.post(
            INFER,
            json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]},
            headers=auth,
        ),
        c.post(
            INFER,
            json={
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [2**40, 4], "data": []}]
            },
            headers=auth,
        ),
        c.post(
            INFER, content=b"{}", headers={**json_headers, "Inference-Header-Content-Length": "x"}
        ),
        c.post("/v2/models/toy/versions/9/infer", json=V2_BODY, headers=auth),
        c.post(
            "/admin/tenants", content=b"\xff", headers={**admin, "Content-Type": "application/json"}
        ),
        c.post("/admin/tenants", json={"name": "x" * 500}, headers=admin),
        c.patch("/admin/tenants/nope", json={"temperature": 1}, headers=admin),
        c.patch(
            "/admin/tenants/acme",
            json={"allowed_models": ["'; DROP TABLE tenants;--"]},
            headers=admin,
        ),
        c.get("/admin/tenants/%27%20OR%201=1--", headers=admin),
        c.put("/admin/tenants", headers=admin),
        c.get("/no/such/route"),
        c.post(PREDICT, json=BODY, headers={"Authorization": "Bearer " + "A" * 5000}),
    ]


def test_error_bodies_reveal_no_internals(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    for response in _bad_requests(harness.client, key, harness.admin):
        status = response.status_code  # type: ignore[attr-defined]
        text = response.text  # type: ignore[attr-defined]
        assert 400 <= status < 500, (status, text)
        assert internals_in(text) == [], text
        error = response.json()["error"]  # type: ignore[attr-defined]
        if response.url.path.startswith("/v2/"):  # type: ignore[attr-defined]
            assert isinstance(error, str) and error  # the Open Inference Protocol's shape
        else:
            assert set(error) == {"code", "message"}
        assert response.headers["x-dynanoise-error-code"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError('File "/srv/app/service/inference.py", line 3: SELECT * FROM tenants'),
        StoreUnavailable("(psycopg.OperationalError) connection to /var/run/postgresql failed"),
        MemoryError(),
    ],
)
def test_failures_inside_the_server_answer_generically(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    key = harness.add_tenant("acme")

    def explode(*args: object, **kwargs: object) -> None:
        raise failure

    services = harness.client.app.state.services  # type: ignore[attr-defined]
    monkeypatch.setattr(services.predictor, "prediction", explode)
    with TestClient(harness.client.app, raise_server_exceptions=False) as client:
        response = client.post(PREDICT, json=BODY, headers=bearer(key))
    assert response.status_code in (500, 503)
    assert internals_in(response.text) == [], response.text
    assert response.json()["error"]["message"] in (
        "internal error",
        "tenant store unavailable, retry later",
    )
    for name, value in SECURITY_HEADERS:
        assert response.headers.get_list(name.decode()) == [value.decode()]  # once


# --- security headers everywhere ------------------------------------------------------


def test_every_kind_of_response_carries_the_security_headers(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = harness.add_tenant("acme")
    c = harness.client
    binary = {**V2_BODY, "parameters": {"binary_data_output": True}}
    responses = {
        "200 v1": c.post(PREDICT, json=BODY, headers=bearer(key)),
        "200 v2 binary": c.post(INFER, json=binary, headers=bearer(key)),
        "200 metrics listener": scrape_response(c),
        "401 metrics listener": TestClient(metrics_app(None, token="t")).get("/metrics"),
        "404 public metrics": c.get("/metrics"),
        "200 openapi": c.get("/openapi.json"),
        "200 docs": c.get("/docs"),
        "200 health": c.get("/v2/health/live"),
        "201 admin": c.post("/admin/tenants", json={"name": "b"}, headers=harness.admin),
        "204 admin": c.delete("/admin/tenants/b", headers=harness.admin),
        "401": c.post(PREDICT, json=BODY),
        "403": c.post(
            "/v1/models/wide/predict",
            json=BODY,
            headers=bearer(harness.add_tenant("t", allowed_models=["toy"])),
        ),
        "404": c.get("/nowhere"),
        "405": c.get(PREDICT),
        "413": c.post(PREDICT, content=b"x" * (harness.settings.max_body_bytes + 1)),
        "422": c.post(PREDICT, json={"instances": []}, headers=bearer(key)),
    }
    services = c.app.state.services  # type: ignore[attr-defined]
    monkeypatch.setattr(services.store, "ping", lambda: False)
    responses["503"] = c.get("/v2/health/ready")
    for label, response in responses.items():
        assert str(response.status_code) == label.split()[0], (label, response.text)
        for name, value in SECURITY_HEADERS:
            assert response.headers.get_list(name.decode()) == [value.decode()], (label, name)
        assert "server" not in response.headers  # no software banner
