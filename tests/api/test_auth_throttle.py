"""Failed authentication is throttled per client address: after `auth_failure_burst`
401s an address is answered 429 with Retry-After (before its key is checked) until its
bucket refills; other addresses are unaffected; memory is bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp

from service.api.auth_throttle import (
    AuthFailureThrottle,
    AuthThrottleMiddleware,
    with_auth_throttle,
)
from service.app import create_app
from service.commands import serve as serve_command
from service.settings import Settings

from ..conftest import ADMIN_TOKEN, ROW_TOY, bearer

BURST = 3
PER_MINUTE = 6.0  # a token every 10 s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(settings: Settings, clock: Clock) -> ASGIApp:
    throttle = AuthFailureThrottle(BURST, PER_MINUTE, max_clients=100, clock=clock)
    return AuthThrottleMiddleware(create_app(settings), throttle)


def _client(app: ASGIApp, address: str = "203.0.113.7") -> TestClient:
    return TestClient(app, client=(address, 40000))


@pytest.fixture
def client(app: ASGIApp) -> Iterator[TestClient]:
    with _client(app) as test_client:
        yield test_client


def _infer(client: TestClient, key: str) -> int:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW_TOY}]}
    return client.post("/v2/models/toy/infer", json=body, headers=bearer(key)).status_code


def _admin(client: TestClient, token: str) -> int:
    return client.get("/admin/tenants", headers=bearer(token)).status_code


FAILURES = {
    "admin API, wrong token": lambda c: _admin(c, "wrong-token"),
    "inference API, wrong key": lambda c: _infer(c, "dn_wrong_key"),
    "inference API, no key": lambda c: c.post("/v2/models/toy/infer", json={}).status_code,
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_repeated_401s_from_one_address_are_answered_429_with_retry_after(
    client: TestClient, failure: str
) -> None:
    fail = FAILURES[failure]
    assert [fail(client) for _ in range(BURST)] == [401] * BURST
    response = client.get("/admin/tenants", headers=bearer("wrong-token"))
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == "rate_limited"
    # While throttled the right credentials wait too: nothing is checked.
    assert _admin(client, ADMIN_TOKEN) == 429


def test_a_throttled_address_may_try_again_once_its_bucket_refills(
    client: TestClient, clock: Clock
) -> None:
    for _ in range(BURST):
        assert _admin(client, "wrong-token") == 401
    response = client.get("/admin/tenants", headers=bearer("wrong-token"))
    assert response.status_code == 429
    clock.now += float(response.headers["Retry-After"])
    assert _admin(client, ADMIN_TOKEN) == 200
    assert _admin(client, "wrong-token") == 401  # one token regained, spent
    assert _admin(client, ADMIN_TOKEN) == 429


def test_other_addresses_and_successes_are_not_throttled(app: ASGIApp) -> None:
    with _client(app, "198.51.100.1") as attacker, _client(app, "198.51.100.2") as operator:
        for _ in range(BURST):
            assert _admin(attacker, "wrong-token") == 401
        assert _admin(attacker, ADMIN_TOKEN) == 429
        for _ in range(3 * BURST):  # successes take no token
            assert _admin(operator, ADMIN_TOKEN) == 200
        assert operator.get("/v2/health/live").status_code == 200


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    clock = Clock()
    throttle = AuthFailureThrottle(BURST, PER_MINUTE, max_clients=50, clock=clock)
    for i in range(10_000):
        throttle.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 50
    last = "10.0.39.15"  # the 10,000th address: still remembered
    for _ in range(BURST):
        throttle.record_failure(last)
    assert throttle.retry_after(last) > 0
    clock.now += 60.0 / PER_MINUTE * BURST  # fully refilled: forgotten
    assert throttle.retry_after(last) == 0
    assert len(throttle) == 49


def test_serve_puts_the_throttle_in_front_of_the_app(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(with_auth_throttle(create_app(settings), settings), AuthThrottleMiddleware)
    off = settings.model_copy(update={"auth_failure_burst": 0})
    assert not isinstance(with_auth_throttle(create_app(off), off), AuthThrottleMiddleware)
    for name, value in {
        "DYNANOISE_DATABASE_URL": settings.database_url,
        "DYNANOISE_MODELS_DIR": str(settings.models_dir),
    }.items():
        monkeypatch.setenv(name, value)
    assert isinstance(serve_command.worker_app(), AuthThrottleMiddleware)
