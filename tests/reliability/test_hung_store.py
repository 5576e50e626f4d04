"""A database that stops answering (SIGSTOPped PostgreSQL, a SQLite writer that holds
its lock) must cost bounded time and threads: 503 or the cached tenant, never a 500,
never a hang, and liveness answers throughout."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import event
from sqlalchemy.engine import make_url

from service.app import build_services, create_app
from service.serving import Services
from service.settings import Settings
from service.tenants import StoreUnavailable, TenantStore
from service.tenants.engine import StoreLimits

from ..conftest import ADMIN_TOKEN, ROW_TOY, bearer
from .conftest import FakeClock, PostgresDatabase

LIMITS = StoreLimits(
    call_timeout_seconds=1.0,
    connect_timeout_seconds=2.0,
    max_concurrent_calls=4,
    queue_timeout_seconds=0.2,
)
# What a bounded call may take on a busy test machine: the timeout, plus slack.
BOUND_SECONDS = LIMITS.call_timeout_seconds + LIMITS.queue_timeout_seconds + 3.0
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PREDICT = "/v1/models/toy/predict"
BODY = {"instances": [ROW_TOY]}


class StallingProxy:
    """A TCP proxy in front of PostgreSQL that can stall: while stalled it accepts
    connections and takes their bytes but forwards nothing either way, which is what
    a SIGSTOPped server looks like from the client (the kernel still ACKs)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._flowing.set()
        for sock in [self._listener, *self._sockets]:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()


@pytest.fixture
def stalling_postgres(postgres_database: PostgresDatabase) -> Iterator[tuple[str, StallingProxy]]:
    """The URL of a fresh PostgreSQL database reached through a `StallingProxy`."""
    url = make_url(postgres_database.url)
    proxy = StallingProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield url.set(port=proxy.port).render_as_string(hide_password=False), proxy
    finally:
        proxy.close()


@contextmanager
def timed(bound: float = BOUND_SECONDS) -> Iterator[None]:
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < bound, f"took {elapsed:.1f} s (bound {bound:.1f} s)"


def _forged(key: str, index: int = 0) -> str:
    """A well-formed key no tenant owns (its id differs, so it costs a lookup)."""
    prefix, key_id, secret = key.split("_", 2)
    return f"{prefix}_{key_id[:-4]}{index:04d}_{secret}"


def _services(settings: Settings, limits: StoreLimits = LIMITS) -> Services:
    """build_services with a tenant store bounded by ``limits``."""
    built = build_services(settings)
    built.store.close()
    store = TenantStore(
        settings.database_url,
        cache_ttl_seconds=settings.tenant_cache_seconds,
        stale_grace_seconds=settings.stale_tenant_grace_seconds,
        limits=limits,
    )
    return Services(
        settings, built.registry, store, built.metrics, built.predictor, repeats=built.repeats
    )


@contextmanager
def serving(settings: Settings, services: Services) -> Iterator[httpx.Client]:
    """The app under uvicorn on a loopback port in this process (a real thread pool)."""
    config = uvicorn.Config(
        create_app(settings, services), host="127.0.0.1", port=0, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- the store: bounded calls, stale answers, one query per key ---------------


@pytest.mark.postgres
def test_hung_postgres_answers_unavailable_in_bounded_time_and_serves_known_tenants(
    stalling_postgres: tuple[str, StallingProxy],
) -> None:
    url, proxy = stalling_postgres
    clock = FakeClock()
    store = TenantStore(
        url, cache_ttl_seconds=1.0, stale_grace_seconds=60.0, clock=clock, limits=LIMITS
    )
    try:
        store.migrate()
        tenant, key = store.create("clinic")
        assert store.authenticate(key) == tenant
        proxy.stall()
        clock.advance(2.0)  # the cache entry expired: the next call asks the database

        with timed():
            assert store.authenticate(key) == tenant  # the last known answer
        with timed():
            assert store.ping() is False
        with timed(), pytest.raises(StoreUnavailable):
            store.list()
        # A flood of unknown keys: each answers StoreUnavailable (never the pool's
        # TimeoutError), within the bound, however many come at once.
        with timed(2 * BOUND_SECONDS), ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(lambda i: _outcome(store, _forged(key, i)), range(64)))
        assert set(outcomes) == {"unavailable"}

        proxy.resume()
        clock.advance(2.0)
        deadline = time.monotonic() + 10
        while not store.ping():  # the stalled calls drain, then the store answers again
            assert time.monotonic() < deadline
        assert store.authenticate(key) == tenant
    finally:
        proxy.resume()
        store.close()


def _outcome(store: TenantStore, key: str) -> str:
    try:
        store.authenticate(key)
    except StoreUnavailable:
        return "unavailable"
    return "answered"


def test_postgres_engine_carries_connect_and_statement_timeouts() -> None:
    store = TenantStore("postgresql://user:pw@127.0.0.1:1/db", limits=LIMITS)
    try:
        connect_args = _connect_args(store)
        assert connect_args["connect_timeout"] == 2
        assert "statement_timeout=1000" in connect_args["options"]
        assert "lock_timeout=1000" in connect_args["options"]
        assert store.engine.pool.timeout() == LIMITS.queue_timeout_seconds  # type: ignore[attr-defined]
    finally:
        store.close()


def _connect_args(store: TenantStore) -> dict[str, Any]:
    captured: dict[str, Any] = {}

    @event.listens_for(store.engine, "do_connect")
    def _capture(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> Any:
        captured.update(cparams)
        raise ConnectionRefusedError("captured")

    with pytest.raises(ConnectionRefusedError):
        store.engine.connect()
    return captured


def test_a_sqlite_writer_holding_the_lock_costs_a_write_the_busy_timeout_not_more(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tenants.db"
    store = TenantStore(f"sqlite:///{path}", limits=LIMITS)
    try:
        store.migrate()
        tenant, key = store.create("clinic")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with timed(), pytest.raises(StoreUnavailable):
                store.create("other")
            assert store.authenticate(key) == tenant  # readers pass a writer (WAL)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        store.create("other")
    finally:
        store.close()


def test_one_expired_cache_entry_costs_one_query_however_many_ask(tmp_path: Path) -> None:
    clock = FakeClock()
    store = TenantStore(f"sqlite:///{tmp_path / 'tenants.db'}", clock=clock, limits=LIMITS)
    try:
        store.migrate()
        tenant, key = store.create("clinic")
        lookups = 0

        @event.listens_for(store.engine, "before_cursor_execute")
        def _slow_lookup(*args: Any) -> None:
            nonlocal lookups
            if "key_id" in args[2]:
                lookups += 1
                time.sleep(0.3)  # long enough for every caller to arrive meanwhile

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(lambda _: store.authenticate(key), range(16))) == {tenant}
        assert lookups == 1
        clock.advance(2.0)  # expired: the next wave asks again, once
        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(lambda _: store.authenticate(key), range(16))) == {tenant}
        assert lookups == 2
    finally:
        store.close()


def test_an_outage_logs_one_warning_then_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    store = TenantStore(f"sqlite:///{tmp_path / 'db' / 'tenants.db'}", clock=clock, limits=LIMITS)
    store._outage._clock = clock  # the throttle's clock too
    try:
        store.migrate()
        tenant, key = store.create("clinic")
        assert store.authenticate(key) == tenant
        (tmp_path / "db").rename(tmp_path / "gone")
        store.engine.dispose()
        clock.advance(2.0)
        with caplog.at_level(logging.WARNING, logger="service.tenants.store"):
            for _ in range(200):
                assert store.authenticate(key) == tenant  # served from cache
                with pytest.raises(StoreUnavailable):
                    store.authenticate(_forged(key))
            assert len(caplog.records) == 1
            assert "unavailable" in caplog.records[0].getMessage()
            clock.advance(31.0)
            store.authenticate(key)
            assert len(caplog.records) == 2
            assert "400 calls failed" in caplog.records[1].getMessage()
            (tmp_path / "gone").rename(tmp_path / "db")
            clock.advance(2.0)
            assert store.authenticate(key) == tenant
            assert len(caplog.records) == 3
            assert "available again" in caplog.records[2].getMessage()
    finally:
        store.close()


# --- the server: liveness and metadata answer while the store hangs -----------


@pytest.mark.postgres
def test_a_flood_of_forged_keys_on_a_hung_postgres_never_blocks_liveness(
    settings: Settings, stalling_postgres: tuple[str, StallingProxy]
) -> None:
    url, proxy = stalling_postgres
    hung = settings.model_copy(update={"database_url": url, "tenant_cache_seconds": 1.0})
    try:
        with serving(hung, _services(hung)) as client:
            key = client.post("/admin/tenants", json={"name": "clinic"}, headers=ADMIN).json()[
                "api_key"
            ]
            assert client.post(PREDICT, json=BODY, headers=bearer(key)).status_code == 200
            proxy.stall()
            time.sleep(1.1)  # the cached entry expires

            with ThreadPoolExecutor(60) as pool:
                flood = [
                    pool.submit(client.post, PREDICT, json=BODY, headers=bearer(_forged(key, i)))
                    for i in range(60)
                ]
                time.sleep(0.2)  # the flood is in
                for path in ("/v2/health/live", "/v1/models"):
                    with timed(1.5):
                        assert client.get(path).status_code == 200
                with timed():
                    known = client.post(PREDICT, json=BODY, headers=bearer(key))
                assert known.status_code == 200  # the last known configuration
                with timed():
                    assert client.get("/v2/health/ready").status_code == 503
                statuses = [future.result().status_code for future in flood]
            assert set(statuses) == {503}
    finally:
        proxy.resume()


def test_a_rate_limited_tenant_on_a_locked_sqlite_never_blocks_liveness(
    settings: Settings,
) -> None:
    path = Path(settings.database_url.removeprefix("sqlite:///"))
    with serving(settings, _services(settings)) as client:
        response = client.post(
            "/admin/tenants",
            json={"name": "clinic", "rate_limit_per_second": 1000},
            headers=ADMIN,
        )
        key = response.json()["api_key"]
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with ThreadPoolExecutor(50) as pool:
                flood = [
                    pool.submit(client.post, PREDICT, json=BODY, headers=bearer(key))
                    for _ in range(50)
                ]
                time.sleep(0.2)
                with timed(1.5):
                    assert client.get("/v2/health/live").status_code == 200
                with timed(4 * BOUND_SECONDS):
                    statuses = [future.result().status_code for future in flood]
            assert set(statuses) <= {200, 429, 503}
        finally:
            holder.execute("ROLLBACK")
            holder.close()
