"""TenantStore on SQLite and PostgreSQL: migrations, CRUD, keys, cache, outages."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, event, inspect, select

from service.defense.params import DefenseParams, InvalidParameters, NoiseMode, Sensitivity
from service.tenants import (
    InvalidTenantName,
    StoreUnavailable,
    TenantExists,
    TenantNotFound,
    TenantStore,
    TenantView,
)
from service.tenants.migrations import build_alembic_config
from service.tenants.tables import Base, TenantRow

from .conftest import FakeClock, TestDatabase

MakeStore = Callable[..., TenantStore]

CUSTOM = DefenseParams(
    base_variance=0.5,
    lambda_scale=4.0,
    temperature=2.5,
    ensemble_size=3,
    sensitivity=Sensitivity.MARGIN,
    noise_mode=NoiseMode.KEYED,
)


def _revision(store: TenantStore) -> str | None:
    with store.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


# --- migrations --------------------------------------------------------------


def test_store_creates_no_schema_before_migrate(database_url: str) -> None:
    store = TenantStore(database_url)
    try:
        assert store.ping()
        assert "tenants" not in inspect(store.engine).get_table_names()
    finally:
        store.close()


def test_migrate_twice_is_a_no_op_that_keeps_data(store: TenantStore) -> None:
    revision = _revision(store)
    created, key = store.create("acme")
    store.migrate()
    assert revision == "0004"
    assert _revision(store) == revision
    assert store.get("acme") == created
    assert store.authenticate(key) == created


def test_migrated_schema_matches_orm_models(store: TenantStore) -> None:
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_migration_downgrades_to_nothing_and_upgrades_again(store: TenantStore) -> None:
    with store.engine.begin() as connection:
        command.downgrade(build_alembic_config(connection), "base")
    assert "tenants" not in inspect(store.engine).get_table_names()
    store.migrate()
    assert "tenants" in inspect(store.engine).get_table_names()
    assert store.is_empty()


# --- create / get / list -----------------------------------------------------


def test_created_tenant_round_trips_every_field(store: TenantStore) -> None:
    created, _ = store.create(
        "clinic",
        CUSTOM,
        allowed_models=["toy", "wide"],
        rate_limit_per_second=2.5,
        rows_per_second=40,
    )
    loaded = store.get("clinic")
    assert loaded == created
    assert loaded.params == CUSTOM
    assert loaded.allowed_models == frozenset({"toy", "wide"})
    assert loaded.rate_limit_per_second == 2.5
    assert loaded.rows_per_second == 40.0
    assert loaded.to_public().as_dict()["rows_per_second"] == 40.0
    assert loaded.version == 1
    assert loaded.created_at.tzinfo is not None
    assert loaded.created_at == loaded.updated_at


def test_create_defaults_to_paper_params_all_models_and_no_rate_limit(store: TenantStore) -> None:
    created, _ = store.create("acme")
    assert created.params == DefenseParams()
    assert created.allowed_models is None
    assert created.allows("anything")
    assert created.rate_limit_per_second is None
    assert created.rows_per_second is None


def test_allowed_models_restricts_models(store: TenantStore) -> None:
    created, _ = store.create("acme", allowed_models=["toy"])
    assert created.allows("toy")
    assert not created.allows("wide")


def test_each_tenant_gets_its_own_32_byte_noise_secret(store: TenantStore) -> None:
    first, _ = store.create("first")
    second, _ = store.create("second")
    assert len(first.noise_secret) == 32
    assert first.noise_secret != second.noise_secret
    assert store.get("first").noise_secret == first.noise_secret


def test_only_a_hash_of_the_key_is_stored(store: TenantStore) -> None:
    _, key = store.create("acme")
    with store.engine.connect() as connection:
        row = connection.execute(select(TenantRow.__table__)).one()
    stored = " ".join(str(value) for value in row)
    assert key not in stored
    assert key.split("_")[-1] not in stored


def test_create_rejects_an_existing_name(store: TenantStore) -> None:
    store.create("acme")
    with pytest.raises(TenantExists):
        store.create("acme")
    assert len(store.list()) == 1


@pytest.mark.parametrize(
    "name", ["", "Acme", "-acme", "_acme", "a" * 64, "a b", "acme\n", "acmé", "a.b"]
)
def test_create_rejects_invalid_names(store: TenantStore, name: str) -> None:
    with pytest.raises(InvalidTenantName):
        store.create(name)
    assert store.is_empty()


@pytest.mark.parametrize("name", ["a", "0", "a" * 63, "acme_clinic-2"])
def test_create_accepts_valid_names(store: TenantStore, name: str) -> None:
    assert store.create(name)[0].name == name


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan, math.inf, True])
def test_create_rejects_invalid_rate_limits(store: TenantStore, rate: float) -> None:
    with pytest.raises(InvalidParameters):
        store.create("acme", rate_limit_per_second=rate)


def test_get_unknown_tenant_raises_not_found(store: TenantStore) -> None:
    with pytest.raises(TenantNotFound):
        store.get("ghost")


def test_list_is_sorted_by_name_and_is_empty_tracks_contents(store: TenantStore) -> None:
    assert store.is_empty()
    assert store.list() == []
    for name in ("zeta", "alpha", "mid"):
        store.create(name)
    assert [tenant.name for tenant in store.list()] == ["alpha", "mid", "zeta"]
    assert not store.is_empty()


def test_public_view_carries_no_secret(store: TenantStore) -> None:
    created, key = store.create("acme", CUSTOM, allowed_models=["toy"])
    view = created.to_public()
    field_names = {field.name for field in dataclasses.fields(TenantView)}
    assert "noise_secret" not in field_names
    assert "key_hash" not in field_names
    as_dict = view.as_dict()
    assert as_dict["temperature"] == 2.5
    assert as_dict["allowed_models"] == ["toy"]
    assert key not in repr(as_dict)
    assert repr(created.noise_secret) not in repr(created)


# --- update / rotate / delete ------------------------------------------------


def test_update_changes_params_and_bumps_version(store: TenantStore) -> None:
    created, key = store.create("acme")
    updated = store.update("acme", temperature=3.0, noise_mode="keyed", rate_limit_per_second=5)
    assert updated.params == dataclasses.replace(
        DefenseParams(), temperature=3.0, noise_mode=NoiseMode.KEYED
    )
    assert updated.rate_limit_per_second == 5.0
    assert updated.version == created.version + 1
    assert updated.updated_at >= created.updated_at
    assert updated.created_at == created.created_at
    assert store.get("acme") == updated
    assert store.authenticate(key) == updated


def test_update_allowed_models_both_ways(store: TenantStore) -> None:
    store.create("acme")
    assert store.update("acme", allowed_models=["toy"]).allowed_models == frozenset({"toy"})
    everything = store.update("acme", allowed_models=None)
    assert everything.allowed_models is None
    assert store.get("acme").allows("wide")


@pytest.mark.parametrize(
    "changes",
    [
        {"temperature": 0.0},
        {"base_variance": -0.1},
        {"ensemble_size": 65},
        {"ensemble_size": 1.5},
        {"lambda_scale": math.nan},
        {"sensitivity": "bogus"},
        {"noise_mode": "sometimes"},
        {"rate_limit_per_second": 0},
        {"rows_per_second": 0},
        {"rows_per_second": -1.0},
        {"rows_per_second": math.inf},
        {"rows_per_second": "10"},
        {"allowed_models": "toy"},
    ],
)
def test_update_validates_and_leaves_tenant_unchanged_on_error(
    store: TenantStore, changes: dict[str, Any]
) -> None:
    created, _ = store.create("acme")
    with pytest.raises(InvalidParameters):
        store.update("acme", **changes)
    assert store.get("acme") == created


@pytest.mark.parametrize("field", ["key_hash", "version", "noise_secret", "colour"])
def test_update_rejects_fields_that_are_not_settings(store: TenantStore, field: str) -> None:
    created, _ = store.create("acme")
    with pytest.raises(TypeError):
        store.update("acme", **{field: "x"})
    assert store.get("acme") == created


def test_update_sets_and_clears_rows_per_second(store: TenantStore) -> None:
    created, key = store.create("acme")
    limited = store.update("acme", rows_per_second=10)
    assert limited.rows_per_second == 10.0 and limited.version == created.version + 1
    assert store.authenticate(key) == limited
    assert store.update("acme", rows_per_second=10.0) == limited  # no change, no new version
    assert store.update("acme", rows_per_second=None).rows_per_second is None


def test_clean_outputs_are_refused_when_the_caller_does_not_allow_them(
    store: TenantStore,
) -> None:
    """The admin API and CLI pass allow_clean_outputs=False unless
    DYNANOISE_ALLOW_CLEAN_OUTPUTS is set; the store itself keeps any valid parameters."""
    clean = DefenseParams(base_variance=0.0, temperature=5.0)
    with pytest.raises(InvalidParameters, match="DYNANOISE_ALLOW_CLEAN_OUTPUTS"):
        store.create("refused", clean, allow_clean_outputs=False)
    with pytest.raises(TenantNotFound):
        store.get("refused")
    store.create("noisy", allow_clean_outputs=False)
    with pytest.raises(InvalidParameters):
        store.update("noisy", allow_clean_outputs=False, base_variance=0.0)
    assert store.get("noisy").params == DefenseParams()
    store.create("stored", clean)  # allowed by default (benchmarks, tests)
    with pytest.raises(InvalidParameters):  # still clean after the change
        store.update("stored", allow_clean_outputs=False, temperature=1.0)
    # Limits and models may change; parameters that add noise fix it.
    assert store.update("stored", allow_clean_outputs=False, rows_per_second=5).version == 2
    fixed = store.update("stored", allow_clean_outputs=False, base_variance=0.2)
    assert fixed.params.adds_noise


def test_update_without_effective_change_keeps_version(store: TenantStore) -> None:
    created, _ = store.create("acme", CUSTOM)
    assert store.update("acme", temperature=CUSTOM.temperature) == created
    assert store.update("acme") == created


def test_update_unknown_tenant_raises_not_found(store: TenantStore) -> None:
    with pytest.raises(TenantNotFound):
        store.update("ghost", temperature=2.0)


def test_rotate_key_replaces_the_key_at_once(store: TenantStore) -> None:
    created, old_key = store.create("acme")
    assert store.authenticate(old_key) is not None
    new_key = store.rotate_key("acme")
    assert new_key != old_key
    assert store.authenticate(old_key) is None
    rotated = store.authenticate(new_key)
    assert rotated is not None
    assert rotated.version == created.version + 1
    assert rotated.noise_secret == created.noise_secret
    with pytest.raises(TenantNotFound):
        store.rotate_key("ghost")


def test_delete_removes_tenant_and_its_key(store: TenantStore) -> None:
    _, key = store.create("acme")
    store.create("other")
    assert store.authenticate(key) is not None
    store.delete("acme")
    assert store.authenticate(key) is None
    with pytest.raises(TenantNotFound):
        store.get("acme")
    with pytest.raises(TenantNotFound):
        store.delete("acme")
    assert [tenant.name for tenant in store.list()] == ["other"]


# --- authenticate ------------------------------------------------------------


def test_authenticate_finds_the_owner_of_each_key(store: TenantStore) -> None:
    _, acme_key = store.create("acme")
    _, other_key = store.create("other")
    acme, other = store.authenticate(acme_key), store.authenticate(other_key)
    assert acme is not None and acme.name == "acme"
    assert other is not None and other.name == "other"


def test_authenticate_rejects_malformed_and_forged_keys(store: TenantStore) -> None:
    _, key = store.create("acme")
    key_id = key.split("_")[1]
    forged = f"dn_{key_id}_{'A' * 32}"  # right key_id, wrong secret
    for bad in ("", "garbage", key + "x", key[:-1], forged, "Bearer " + key):
        assert store.authenticate(bad) is None


# --- cache -------------------------------------------------------------------


def _count_queries(store: TenantStore) -> list[str]:
    statements: list[str] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def _record(*args: Any) -> None:
        statements.append(args[2])

    return statements


def test_authenticate_answers_from_cache_within_ttl(store: TenantStore, clock: FakeClock) -> None:
    _, key = store.create("acme")
    statements = _count_queries(store)
    store.authenticate(key)
    after_first = len(statements)
    store.authenticate(key)
    assert after_first > 0
    assert len(statements) == after_first
    clock.advance(1.01)
    store.authenticate(key)
    assert len(statements) > after_first


def test_cached_answers_only_from_a_fresh_cache_entry_and_never_queries(
    store: TenantStore, clock: FakeClock
) -> None:
    _, key = store.create("acme")
    statements = _count_queries(store)
    assert store.cached(key) is None  # not loaded yet: "ask authenticate", not "unknown"
    assert store.cached("not-a-key") is None
    assert store.cached(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert len(statements) == 0
    store.authenticate(key)
    loaded = len(statements)
    cached = store.cached(key)
    assert cached is not None and cached.name == "acme"
    clock.advance(0.4)  # before the refresh-ahead point: nothing is asked at all
    assert store.cached(key) is not None
    assert store.cached(key, min_remaining_seconds=0.7) is None  # expires within 0.7 s
    clock.advance(0.7)
    assert store.cached(key) is None  # expired: no refresh either, "ask authenticate"
    assert len(statements) == loaded


def test_while_a_key_is_being_looked_up_cached_answers_its_followers_with_the_last_tenant(
    store: TenantStore, clock: FakeClock
) -> None:
    _, key = store.create("acme")
    tenant = store.authenticate(key)
    clock.advance(1.5)  # expired, within the stale grace
    assert store.cached(key) is None  # nobody is asking: this caller must
    # Another call leads the lookup (as `authenticate` would, in a pool thread): its
    # followers get the last answer, as authenticate's followers do, on the event loop.
    (key_hash,) = store._cache
    store._flights[key_hash] = Future()
    assert store.cached(key) == tenant
    clock.advance(store._stale_grace)  # past the grace: never an answer that old
    assert store.cached(key) is None


def test_a_lookup_is_started_for_an_expired_entry_only(
    store: TenantStore, clock: FakeClock
) -> None:
    _, key = store.create("acme")
    assert store.lookup_under_way(key) is None  # never answered: authenticate's job
    store.authenticate(key)
    assert store.lookup_under_way(key) is None  # fresh: nothing to wait for
    clock.advance(1.5)
    lookup = store.lookup_under_way(key)
    assert lookup is not None and lookup.result(timeout=10) is not None


def test_change_by_another_process_arrives_within_ttl(
    make_store: MakeStore, clock: FakeClock
) -> None:
    admin, replica = make_store(), make_store(cache_ttl_seconds=1.0)
    _, key = admin.create("acme")
    before = replica.authenticate(key)
    admin.update("acme", temperature=3.0)
    clock.advance(0.4)  # before the refresh-ahead point (half the TTL)
    assert replica.authenticate(key) == before  # still cached
    clock.advance(0.7)
    after = replica.authenticate(key)
    assert after is not None
    assert after.params.temperature == 3.0


def test_a_key_in_use_is_refreshed_ahead_and_never_expires_under_traffic(
    make_store: MakeStore, clock: FakeClock
) -> None:
    admin, replica = make_store(), make_store(cache_ttl_seconds=1.0)
    _, key = admin.create("acme")
    before = replica.authenticate(key)
    admin.update("acme", temperature=3.0)
    clock.advance(0.4)
    assert replica.cached(key) == before  # fresh, and not yet due a refresh
    assert replica._refresher is None
    clock.advance(0.2)
    # Past half the TTL: the cached answer still comes back at once, and a lookup
    # starts in the background (on the store's own thread, never the caller's).
    assert replica.cached(key) == before
    deadline = time.monotonic() + 10.0
    while (refreshed := replica.cached(key)) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert refreshed is not None and refreshed.params.temperature == 3.0
    # The refreshed entry was loaded at 0.6: still fresh at 1.5, when the first
    # entry would have expired and sent every request to the database.
    clock.advance(0.9)
    assert replica.cached(key) == refreshed


def test_rotation_by_another_process_revokes_within_ttl(
    make_store: MakeStore, clock: FakeClock
) -> None:
    admin, replica = make_store(), make_store(cache_ttl_seconds=1.0)
    _, old_key = admin.create("acme")
    assert replica.authenticate(old_key) is not None
    new_key = admin.rotate_key("acme")
    clock.advance(1.01)
    assert replica.authenticate(old_key) is None
    assert replica.authenticate(new_key) is not None


def test_changes_through_the_same_store_skip_the_cache(make_store: MakeStore) -> None:
    store = make_store(cache_ttl_seconds=3600.0)
    _, key = store.create("acme")
    assert store.authenticate(key) is not None
    store.update("acme", temperature=7.0)
    refreshed = store.authenticate(key)
    assert refreshed is not None and refreshed.params.temperature == 7.0
    new_key = store.rotate_key("acme")
    assert store.authenticate(key) is None
    assert store.authenticate(new_key) is not None
    store.delete("acme")
    assert store.authenticate(new_key) is None


# --- outages -----------------------------------------------------------------


def test_outage_serves_last_known_good_within_grace_then_fails(
    make_store: MakeStore, database: TestDatabase, clock: FakeClock
) -> None:
    store = make_store(cache_ttl_seconds=1.0, stale_grace_seconds=300.0)
    created, key = store.create("acme")
    _, never_seen_key = store.create("other")
    assert store.authenticate(key) == created
    database.make_unreachable()
    clock.advance(10.0)
    assert store.authenticate(key) == created
    assert not store.ping()
    with pytest.raises(StoreUnavailable):
        store.authenticate(never_seen_key)
    with pytest.raises(StoreUnavailable):
        store.get("acme")
    assert store.authenticate("malformed") is None
    clock.advance(291.0)
    with pytest.raises(StoreUnavailable):
        store.authenticate(key)


def test_ping_reports_a_reachable_database(store: TenantStore) -> None:
    assert store.ping()


# --- threads -----------------------------------------------------------------


def test_concurrent_creates_of_one_name_let_exactly_one_win(store: TenantStore) -> None:
    barrier = threading.Barrier(6)

    def attempt(_: int) -> str:
        barrier.wait()
        try:
            store.create("race")
        except TenantExists:
            return "exists"
        return "created"

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(attempt, range(6)))
    assert sorted(outcomes) == ["created"] + ["exists"] * 5


def test_authenticate_from_many_threads_during_updates(make_store: MakeStore) -> None:
    store = make_store(cache_ttl_seconds=0.0)
    _, key = store.create("acme")
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                tenant = store.authenticate(key)
                assert tenant is not None
                seen.append(tenant.version)
            except BaseException as exc:  # collected and re-raised below
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for step in range(1, 11):
        store.update("acme", temperature=1.0 + step)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert seen
    final = store.authenticate(key)
    assert final is not None and final.version == 11 and final.params.temperature == 11.0


def test_sqlite_in_memory_store_is_shared_between_threads() -> None:
    store = TenantStore("sqlite://")
    try:
        store.migrate()
        _, key = store.create("acme")
        with ThreadPoolExecutor(max_workers=2) as pool:
            found = list(pool.map(lambda _: store.authenticate(key), range(4)))
        assert all(tenant is not None and tenant.name == "acme" for tenant in found)
    finally:
        store.close()


@pytest.mark.postgres
def test_plain_postgresql_url_is_served_by_psycopg(postgres_admin: Engine) -> None:
    plain = postgres_admin.url.set(drivername="postgresql").render_as_string(hide_password=False)
    store = TenantStore(plain)
    try:
        assert store.engine.dialect.driver == "psycopg"
        assert store.ping()
    finally:
        store.close()
