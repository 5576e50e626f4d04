"""Per-tenant rate limits: GCRA semantics on a hand-moved clock, one bucket shared by
every process on the database, 429 with Retry-After through the API, and the
fallback while the database is away."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from service.api.middleware import SECURITY_HEADERS
from service.ratelimit import ROWS, RateLimiter
from service.settings import Settings
from service.tenants import Tenant, TenantStore

from ..conftest import ADMIN_TOKEN, ROW_TOY, bearer
from ..onnx_factory import write_linear_model
from .conftest import FakeClock, build_app
from .leaks import internals_in
from .server import running_server

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PREDICT = "/v1/models/toy/predict"
BODY = {"instances": [ROW_TOY]}


@dataclass
class Backend:
    """Where buckets live: `make()` opens another limiter (another process, as far as
    the database can tell) on the same state."""

    kind: str
    url: str | None
    clock: FakeClock
    stores: list[TenantStore]

    def engine(self) -> Engine | None:
        if self.url is None:
            return None
        store = TenantStore(self.url)
        store.migrate()
        self.stores.append(store)
        return store.engine

    def make(self, burst_seconds: float = 1.0) -> RateLimiter:
        return RateLimiter(self.engine(), burst_seconds=burst_seconds, clock=self.clock)


@pytest.fixture(
    params=["in-process", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":
        url: str | None = request.getfixturevalue("postgres_database").url
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'tenants.db'}"
    else:
        url = None
    stores: list[TenantStore] = []
    yield Backend(request.param, url, FakeClock(), stores)
    for store in stores:
        store.close()


def _admitted(limiter: RateLimiter, tenant: str, rate: float, n: int) -> int:
    return sum(limiter.check(tenant, rate).allowed for _ in range(n))


# --- GCRA semantics ----------------------------------------------------------------


def test_a_full_bucket_admits_its_burst_then_refills_at_the_rate(backend: Backend) -> None:
    limiter = backend.make(burst_seconds=2.0)
    # rate 5/s, bucket of 10: ten at once, then one more per 0.2 s.
    assert _admitted(limiter, "acme", 5.0, 25) == 10
    refused = limiter.check("acme", 5.0)
    assert not refused.allowed
    assert refused.retry_after_seconds == pytest.approx(0.2, abs=1e-6)
    backend.clock.advance(0.2)
    assert limiter.check("acme", 5.0).allowed
    assert not limiter.check("acme", 5.0).allowed
    backend.clock.advance(1.0)  # five tokens back
    assert _admitted(limiter, "acme", 5.0, 10) == 5


def test_a_steady_stream_gets_the_rate_and_no_more(backend: Backend) -> None:
    limiter = backend.make(burst_seconds=1.0)
    admitted = 0
    for _ in range(200):  # 10 s of requests every 50 ms at a limit of 4/s
        admitted += limiter.check("acme", 4.0).allowed
        backend.clock.advance(0.05)
    assert admitted == pytest.approx(4 + 4 * 10, abs=1)


def test_tenants_have_separate_buckets(backend: Backend) -> None:
    limiter = backend.make()
    assert _admitted(limiter, "a", 1.0, 3) == 1
    assert _admitted(limiter, "b", 1.0, 3) == 1


def test_a_raised_limit_applies_at_once(backend: Backend) -> None:
    limiter = backend.make()
    assert _admitted(limiter, "acme", 0.01, 3) == 1  # next token in 100 s
    assert not limiter.check("acme", 0.01).allowed
    assert limiter.check("acme", 1000.0).allowed


def test_a_tiny_rate_still_admits_one_and_says_when_the_next_comes(backend: Backend) -> None:
    limiter = backend.make()
    assert limiter.check("acme", 0.001).allowed
    refused = limiter.check("acme", 0.001)
    assert not refused.allowed and refused.retry_after_seconds == pytest.approx(1000.0)


# --- rows per second ---------------------------------------------------------------


def test_a_request_of_n_rows_costs_n_units_of_the_rows_bucket(backend: Backend) -> None:
    limiter = backend.make(burst_seconds=1.0)
    # 10 rows/s, a bucket of 10 rows: 8 rows pass, 8 more do not, 2 more do.
    assert limiter.check("acme", 10.0, 8, bucket=ROWS).allowed
    refused = limiter.check("acme", 10.0, 8, bucket=ROWS)
    assert not refused.allowed and not refused.over_burst
    assert refused.retry_after_seconds == pytest.approx(0.6, abs=1e-6)
    assert limiter.check("acme", 10.0, 2, bucket=ROWS).allowed
    assert not limiter.check("acme", 10.0, 1, bucket=ROWS).allowed
    backend.clock.advance(0.8)
    assert limiter.check("acme", 10.0, 8, bucket=ROWS).allowed
    # The requests bucket of the same tenant is another one.
    assert limiter.check("acme", 10.0).allowed


def test_a_request_of_more_rows_than_the_bucket_holds_is_never_admitted(
    backend: Backend,
) -> None:
    limiter = backend.make(burst_seconds=1.0)
    decision = limiter.check("acme", 10.0, 11, bucket=ROWS)
    assert not decision.allowed and decision.over_burst
    assert decision.retry_after_seconds == pytest.approx(1.0)
    assert limiter.check("acme", 10.0, 10, bucket=ROWS).allowed  # and it cost nothing


def test_a_small_request_is_not_held_back_by_a_large_ones_refusal(backend: Backend) -> None:
    limiter = backend.make(burst_seconds=1.0)
    assert limiter.check("acme", 10.0, 6, bucket=ROWS).allowed
    assert not limiter.check("acme", 10.0, 6, bucket=ROWS).allowed  # remembered
    assert limiter.check("acme", 10.0, 4, bucket=ROWS).allowed  # 4 rows still fit
    assert not limiter.check("acme", 10.0, 1, bucket=ROWS).allowed


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_processes_on_one_database_share_one_rows_bucket(backend: Backend) -> None:
    first, second = backend.make(), backend.make()
    assert first.check("acme", 10.0, 8, bucket=ROWS).allowed
    assert not second.check("acme", 10.0, 8, bucket=ROWS).allowed
    assert second.check("acme", 10.0, 2, bucket=ROWS).allowed


def test_enforce_rows_raises_rate_limited_and_ignores_tenants_without_a_rows_limit(
    tmp_path: Path,
) -> None:
    from service.errors import RateLimited

    store = TenantStore(f"sqlite:///{tmp_path / 't.db'}")
    store.migrate()
    rows, _ = store.create("rows", rows_per_second=10.0)
    requests, _ = store.create("requests", rate_limit_per_second=1000.0)
    limiter = RateLimiter(store.engine, clock=FakeClock())
    limiter.enforce_rows(rows, 8)
    with pytest.raises(RateLimited) as refused:
        limiter.enforce_rows(rows, 8)
    assert refused.value.retry_after_seconds == pytest.approx(0.6)
    assert "10 input rows per second" in refused.value.message
    with pytest.raises(RateLimited) as too_large:
        limiter.enforce_rows(rows, 11)
    assert "at most 10 rows per request" in too_large.value.message
    for _ in range(20):
        limiter.enforce_rows(requests, 1024)  # no rows limit: no-op
    store.close()


# --- shared between processes -------------------------------------------------------


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_processes_on_one_database_share_one_bucket(backend: Backend) -> None:
    workers = [backend.make() for _ in range(3)]
    # A bucket of 3 at 3/s: three admissions in total, whichever process asks.
    decisions = [w.check("acme", 3.0).allowed for _ in range(3) for w in workers]
    assert sum(decisions) == 3
    backend.clock.advance(1 / 3)
    assert [w.check("acme", 3.0).allowed for w in workers].count(True) == 1


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_concurrent_requests_never_overdraw_the_shared_bucket(backend: Backend) -> None:
    workers = [backend.make(burst_seconds=10.0) for _ in range(4)]  # bucket of 20 at 2/s

    def hammer(limiter: RateLimiter) -> int:
        return _admitted(limiter, "acme", 2.0, 15)

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sum(pool.map(hammer, workers)) == 20


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_flood_of_refused_requests_costs_no_database_round_trips(backend: Backend) -> None:
    limiter = backend.make()
    engine = backend.stores[-1].engine
    assert limiter.check("acme", 0.5).allowed
    assert not limiter.check("acme", 0.5).allowed  # learns: next token in 2 s
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert _admitted(limiter, "acme", 0.5, 500) == 0
    assert statements == []
    backend.clock.advance(2.0)
    assert limiter.check("acme", 0.5).allowed  # and asks again once it may pass


def test_tenants_without_a_limit_never_touch_the_database(tmp_path: Path) -> None:
    store = TenantStore(f"sqlite:///{tmp_path / 't.db'}")
    store.migrate()
    tenant, _ = store.create("free")
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    limiter = RateLimiter(store.engine)
    for _ in range(100):
        limiter.enforce(tenant)
    assert statements == []
    store.close()


def test_limits_hold_per_process_while_the_database_is_away(tmp_path: Path) -> None:
    directory = tmp_path / "db"
    store = TenantStore(f"sqlite:///{directory / 't.db'}")
    store.migrate()
    clock = FakeClock()
    limiter = RateLimiter(store.engine, clock=clock)
    assert _admitted(limiter, "acme", 2.0, 5) == 2
    shutil.move(directory, tmp_path / "away")
    store.engine.dispose()
    clock.advance(10.0)
    # No database: requests are still limited, by this process alone.
    assert _admitted(limiter, "acme", 2.0, 5) == 2
    shutil.move(tmp_path / "away", directory)
    clock.advance(10.0)
    assert _admitted(limiter, "acme", 2.0, 5) == 2  # shared again
    store.close()


def test_enforce_raises_rate_limited_with_the_wait(tmp_path: Path) -> None:
    from service.errors import RateLimited

    store = TenantStore(f"sqlite:///{tmp_path / 't.db'}")
    store.migrate()
    tenant, _ = store.create("slow", rate_limit_per_second=0.5)
    assert isinstance(tenant, Tenant)
    limiter = RateLimiter(store.engine, clock=FakeClock())
    limiter.enforce(tenant)
    with pytest.raises(RateLimited) as refused:
        limiter.enforce(tenant)
    assert refused.value.retry_after_seconds == pytest.approx(2.0)
    from service.api.status import status_for

    assert status_for(refused.value).status == 429
    store.close()


# --- through the API ------------------------------------------------------------------


def test_over_the_limit_is_429_with_retry_after_and_others_are_unaffected(
    settings: Settings,
) -> None:
    clock = FakeClock()
    with TestClient(build_app(settings, limiter_clock=clock)) as client:
        slow = client.post(
            "/admin/tenants", json={"name": "slow", "rate_limit_per_second": 0.25}, headers=ADMIN
        ).json()["api_key"]
        free = client.post("/admin/tenants", json={"name": "free"}, headers=ADMIN).json()["api_key"]
        assert client.post(PREDICT, json=BODY, headers=bearer(slow)).status_code == 200
        v2 = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW_TOY}]}
        for response in (
            client.post(PREDICT, json=BODY, headers=bearer(slow)),
            client.post("/v2/models/toy/infer", json=v2, headers=bearer(slow)),
        ):
            assert response.status_code == 429
            assert response.headers["retry-after"] == "4"  # whole seconds, rounded up
            assert response.headers["x-dynanoise-error-code"] == "rate_limited"
            assert internals_in(response.text) == []
            for name, value in SECURITY_HEADERS:
                assert response.headers[name.decode()] == value.decode()
        # Every tenant has its own bucket; unlimited tenants are never refused.
        assert all(
            client.post(PREDICT, json=BODY, headers=bearer(free)).status_code == 200
            for _ in range(20)
        )
        clock.advance(4.0)
        assert client.post(PREDICT, json=BODY, headers=bearer(slow)).status_code == 200


def test_rows_per_second_limits_the_rows_a_tenant_sends_through_the_api(
    settings: Settings,
) -> None:
    """Issue 13: the request limit let one request buy a whole batch of rows. A tenant
    with rows_per_second 10 may send one 8-row request, and is refused a second at once."""
    clock = FakeClock()
    eight = {"instances": [ROW_TOY] * 8}
    with TestClient(build_app(settings, limiter_clock=clock)) as client:
        rows = client.post(
            "/admin/tenants", json={"name": "rows", "rows_per_second": 10}, headers=ADMIN
        ).json()["api_key"]
        requests = client.post(
            "/admin/tenants", json={"name": "requests", "rate_limit_per_second": 3}, headers=ADMIN
        ).json()["api_key"]
        assert client.post(PREDICT, json=eight, headers=bearer(rows)).status_code == 200
        v2 = {
            "inputs": [{"name": "input", "shape": [8, 4], "datatype": "FP32", "data": ROW_TOY * 8}]
        }
        for response in (
            client.post(PREDICT, json=eight, headers=bearer(rows)),
            client.post("/v2/models/toy/infer", json=v2, headers=bearer(rows)),
        ):
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"] == "1"  # 0.6 s, rounded up
            assert response.headers["x-dynanoise-error-code"] == "rate_limited"
            assert "rows per second" in response.text
        # Fewer rows still fit the bucket's remaining 2.
        assert (
            client.post(
                PREDICT, json={"instances": [ROW_TOY] * 2}, headers=bearer(rows)
            ).status_code
            == 200
        )
        # More rows than a full bucket: refused, saying so.
        clock.advance(10.0)
        too_many = client.post(PREDICT, json={"instances": [ROW_TOY] * 11}, headers=bearer(rows))
        assert too_many.status_code == 429
        assert "at most 10 rows per request" in too_many.json()["error"]["message"]
        assert client.post(PREDICT, json=eight, headers=bearer(rows)).status_code == 200
        # A requests-per-second tenant counts requests, not rows: three 8-row requests.
        assert all(
            client.post(PREDICT, json=eight, headers=bearer(requests)).status_code == 200
            for _ in range(3)
        )
        assert client.post(PREDICT, json=BODY, headers=bearer(requests)).status_code == 429


def test_bad_requests_of_a_limited_tenant_count_too(settings: Settings) -> None:
    with TestClient(build_app(settings, limiter_clock=FakeClock())) as client:
        key = client.post(
            "/admin/tenants", json={"name": "slow", "rate_limit_per_second": 0.001}, headers=ADMIN
        ).json()["api_key"]
        bad = client.post(PREDICT, json={"instances": [[1, 2]]}, headers=bearer(key))
        assert bad.status_code == 422
        assert client.post(PREDICT, json=BODY, headers=bearer(key)).status_code == 429


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_app_instances_share_the_limit(
    settings: Settings, kind: str, request: pytest.FixtureRequest
) -> None:
    if kind == "postgres":
        settings = settings.model_copy(
            update={"database_url": request.getfixturevalue("postgres_database").url}
        )
    with (
        TestClient(build_app(settings)) as first,
        TestClient(build_app(settings)) as second,
    ):
        key = first.post(
            "/admin/tenants", json={"name": "slow", "rate_limit_per_second": 0.001}, headers=ADMIN
        ).json()["api_key"]
        assert first.post(PREDICT, json=BODY, headers=bearer(key)).status_code == 200
        refused = second.post(PREDICT, json=BODY, headers=bearer(key))
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 990  # the bucket's, not a fresh one


@pytest.mark.slow
def test_live_workers_share_one_bucket(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_linear_model(models, name="toy", n_features=4, n_classes=3, seed=0)
    with running_server(
        tmp_path,
        models_dir=models,
        database_url=f"sqlite:///{tmp_path / 'tenants.db'}",
        workers=2,
    ) as server:
        admin = {"Authorization": "Bearer reliability-admin-token-of-32-characters-or-more"}
        key = httpx.post(
            f"{server.url}/admin/tenants",
            json={"name": "slow", "rate_limit_per_second": 0.001},
            headers=admin,
            timeout=30,
        ).json()["api_key"]
        body = json.dumps(BODY)

        def one(_: int) -> int:
            # A fresh connection each time, so the kernel spreads them over the workers.
            with httpx.Client(timeout=30) as client:
                response = client.post(
                    f"{server.url}{PREDICT}",
                    content=body,
                    headers={**bearer(key), "Content-Type": "application/json"},
                )
            return response.status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(one, range(24)))
        # One bucket of one request for the whole server, not one per worker.
        assert statuses.count(200) == 1
        assert statuses.count(429) == 23
