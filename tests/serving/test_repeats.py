"""The repeated-query monitor: near-duplicates share a key, distinct rows do not, the
sketch forgets after two windows in constant memory, and the service counts repeats
on the metrics listener and caps them per tenant."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from pydantic import ValidationError
from sklearn.datasets import load_digits

from service.app import create_app
from service.serving import repeats
from service.serving.repeats import BloomSketch, RepeatedQueryMonitor, RowHasher, quantize
from service.settings import Settings

from ..api.test_fastpath import SMALL, _hops
from ..conftest import ROW_TOY, Harness, bearer
from ..scrape import scrape

SALT = b"a fixed salt: the tests' counts do not depend on the process"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _monitor(**options: object) -> RepeatedQueryMonitor:
    return RepeatedQueryMonitor(salt=SALT, **options)  # type: ignore[arg-type]


def _digits() -> NDArray[np.float32]:
    return (load_digits().data / 16.0).astype(np.float32)


def _random_rows(n: int, seed: int = 0) -> NDArray[np.float32]:
    return np.random.default_rng(seed).normal(size=(n, 64)).astype(np.float32)


def _observe_in_batches(monitor: RepeatedQueryMonitor, rows: NDArray[np.generic], size: int) -> int:
    return sum(monitor.observe("t", rows[i : i + size]) for i in range(0, len(rows), size))


def _one_ulp_steps(rows: NDArray[np.float32], share: float, seed: int) -> NDArray[np.float32]:
    """``rows`` with a random ``share`` of the features moved one ulp up or down."""
    rng = np.random.default_rng(seed)
    toward = np.where(rng.random(rows.shape) < 0.5, np.inf, -np.inf).astype(np.float32)
    stepped = np.nextafter(rows, toward)
    return np.where(rng.random(rows.shape) < share, stepped, rows)


def _with_denormals(rows: NDArray[np.float32], seed: int) -> NDArray[np.float32]:
    """``rows`` with denormals (and their negatives) written into their zero features."""
    rng = np.random.default_rng(seed)
    tiny = rng.integers(1, 2**23, rows.shape).astype(np.uint32).view(np.float32)
    signed = np.where(rng.random(rows.shape) < 0.5, tiny, -tiny)
    return np.where(rows == 0, signed, rows)


def _with(rows: NDArray[np.float32], value: float) -> NDArray[np.float32]:
    return np.where(rows == 0, np.float32(value), rows)


def test_exact_repeats_are_all_counted() -> None:
    monitor = _monitor()
    rows = _digits()[:1000]
    assert monitor.observe("t", rows) == 0
    assert monitor.observe("t", rows) == 1000
    assert monitor.recent("t") == 1000


def test_duplicates_within_one_batch_count() -> None:
    monitor = _monitor()
    rows = _digits()[:10]
    assert monitor.observe("t", np.concatenate([rows, rows[:4], rows[:1]])) == 5
    assert monitor.observe("t", np.concatenate([rows[:2], _digits()[10:12]])) == 2


Change = Callable[[NDArray[np.float32]], NDArray[np.float32]]


@pytest.mark.parametrize(
    ("source", "changed"),
    [
        pytest.param("random", lambda x: _one_ulp_steps(x, 1 / 3, 1), id="ulp-some-features"),
        pytest.param("random", lambda x: _one_ulp_steps(x, 1.0, 2), id="ulp-every-feature"),
        pytest.param("digits", lambda x: _one_ulp_steps(x, 1.0, 3), id="ulp-digits"),
        pytest.param("digits", lambda x: _with_denormals(x, 4), id="denormals-in-zeros"),
        pytest.param("digits", lambda x: _with(x, -0.0), id="negative-zeros"),
        pytest.param("digits", lambda x: _with(x, 1e-30), id="tiny-values-in-zeros"),
    ],
)
def test_imperceptibly_changed_rows_count_as_repeats(source: str, changed: Change) -> None:
    original = _random_rows(1000) if source == "random" else _digits()[:1000]
    near = changed(original)
    assert not np.array_equal(near.view(np.uint32), original.view(np.uint32))
    monitor = _monitor()
    monitor.observe("t", original)
    assert monitor.observe("t", near) >= 990  # >= 99 % of 1,000


def test_distinct_digits_rows_are_not_flagged() -> None:
    """1,797 distinct rows, a row at a time: the filters are far below capacity (a
    false positive rate of about 1e-19), so none is a repeat."""
    rows = _digits()
    assert len(np.unique(rows, axis=0)) == len(rows)
    assert _observe_in_batches(_monitor(), rows, 1) == 0


def test_distinct_random_rows_are_not_flagged() -> None:
    assert _observe_in_batches(_monitor(), _random_rows(20_000, seed=5), 100) == 0


def test_false_positives_at_capacity_match_the_bloom_filter_rate() -> None:
    """A filter of 2^16 bits filled to its capacity (4,096 rows) finds a new row with
    probability (1 - exp(-11 / 16))^11 = 4.6e-4: 20,000 new rows give about 9."""
    monitor = _monitor(sketch_bits=2**16)
    assert monitor.sketch.capacity == 4096 and monitor.sketch.hashes == 11
    assert monitor.sketch.false_positive_rate() == pytest.approx(4.6e-4, rel=0.02)
    assert _observe_in_batches(monitor, _random_rows(4096, seed=6), 64) <= 3
    flagged = monitor.observe("t", _random_rows(20_000, seed=7))
    assert flagged <= 25  # Poisson(9.2): P(> 25) < 1e-5; the salt is fixed anyway


def test_a_row_is_remembered_through_one_rotation_and_forgotten_after_two() -> None:
    clock = _Clock()
    monitor = _monitor(window_seconds=60, clock=clock)
    rows = _digits()[:100]
    monitor.observe("t", rows)
    clock.now += 30
    assert monitor.observe("t", rows[:10]) == 10
    clock.now += 40  # the next window: the first one's filter is the previous one
    assert monitor.recent("t") == 0
    assert monitor.observe("t", rows[10:20]) == 10
    clock.now += 60  # rows[20:] were last seen two windows ago
    assert monitor.observe("t", rows[20:]) == 0
    assert monitor.observe("t", rows[10:20]) == 10  # seen in the previous window


def test_a_long_silence_forgets_both_windows() -> None:
    clock = _Clock()
    monitor = _monitor(window_seconds=60, clock=clock)
    monitor.observe("t", _digits()[:50])
    clock.now += 60 * 5
    assert monitor.observe("t", _digits()[:50]) == 0
    assert monitor.recent("t") == 0


def test_memory_is_fixed_whatever_the_traffic() -> None:
    monitor = _monitor()
    monitor.observe("t", _random_rows(1, seed=8))
    before = monitor.memory_bytes()
    assert before == 2 * 2**20 // 8
    _observe_in_batches(monitor, _random_rows(100_000, seed=9), 1024)
    assert monitor.memory_bytes() == before


def test_tenants_are_counted_apart_and_the_least_recent_is_forgotten() -> None:
    monitor = _monitor(max_tenants=3)
    rows = _digits()[:20]
    for tenant in ("a", "b", "c"):
        assert monitor.observe(tenant, rows) == 0
    assert monitor.observe("a", rows[:1]) == 1  # "a" is now the most recent
    monitor.observe("d", rows)
    assert monitor.tenants() == ["c", "a", "d"]
    assert monitor.memory_bytes() == 3 * 2 * 2**20 // 8
    assert monitor.observe("b", rows) == 0  # forgotten with its filters


def test_keys_depend_on_the_salt_and_on_feature_positions() -> None:
    rows = _digits()[:100]
    assert np.array_equal(RowHasher(SALT)(rows), RowHasher(SALT)(rows))
    assert not np.intersect1d(RowHasher(SALT)(rows), RowHasher(b"another")(rows)).size
    swapped = rows[:, ::-1].copy()
    assert not np.intersect1d(RowHasher(SALT)(rows), RowHasher(SALT)(swapped)).size


def test_quantize_keeps_real_differences() -> None:
    row = np.array([[1.0, 0.5, 0.25, 0.0]], dtype=np.float32)
    assert np.array_equal(quantize(row), quantize(row * np.float32(1 + 2**-20)))
    assert not np.array_equal(quantize(row), quantize(row * np.float32(1.01)))
    assert not np.array_equal(quantize(row), quantize(row + np.float32([0, 0, 0, 0.01])))


def test_bloom_sketch_refuses_sizes_that_are_not_powers_of_two() -> None:
    with pytest.raises(ValueError):
        BloomSketch(1000)


def test_concurrent_observers_lose_no_count() -> None:
    monitor = _monitor()
    rows = _random_rows(8 * 200, seed=10).reshape(8, 200, 64)

    def send(part: NDArray[np.float32]) -> None:
        for start in range(0, 200, 10):
            monitor.observe("t", part[start : start + 10])
            monitor.observe("t", part[start : start + 10])

    threads = [threading.Thread(target=send, args=(part,)) for part in rows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert monitor.recent("t") == 8 * 200


@pytest.mark.parametrize(
    ("repeats_then_now", "cap"),
    [([(0.0, 7)], 6.0), ([(0.0, 3), (50.0, 4)], 6.0), ([(10.0, 30), (70.0, 2)], 20.0)],
)
def test_the_cap_clears_after_the_wait_it_announces(
    repeats_then_now: list[tuple[float, int]], cap: float
) -> None:
    clock = _Clock()
    monitor = _monitor(window_seconds=60, clock=clock)
    start = clock.now
    monitor.observe("t", np.zeros((1, 4), dtype=np.float32))
    for at, count in repeats_then_now:
        clock.now = start + at
        assert monitor.observe("t", np.zeros((count, 4), dtype=np.float32)) == count
    wait = monitor.seconds_until_under("t", cap)
    assert wait > 0 and monitor.per_minute("t") > cap
    clock.now += wait - 0.5
    assert monitor.per_minute("t") > cap
    clock.now += 0.5 + 1e-6
    assert monitor.per_minute("t") <= cap + 1e-9
    assert monitor.seconds_until_under("t", cap) == 0.0


def test_sketch_bits_must_be_a_power_of_two(settings: Settings) -> None:
    with pytest.raises(ValidationError):
        Settings(repeat_sketch_bits=3 * 2**18)
    assert settings.repeat_monitor and settings.repeat_window_seconds == 60.0


def _repeats(client: TestClient, tenant: str) -> float:
    total = 0.0
    for line in scrape(client).splitlines():
        if line.startswith("dynanoise_repeated_queries_total{") and f'tenant="{tenant}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_metrics_listener_counts_repeated_rows(harness: Harness) -> None:
    key = bearer(harness.add_tenant("acme"))
    nudged = np.nextafter(np.float32(ROW_TOY), np.float32(np.inf)).tolist()
    for instances in ([ROW_TOY], [ROW_TOY], [ROW_TOY, nudged], [[9.0, 8.0, 7.0, 6.0]]):
        response = harness.client.post(
            "/v1/models/toy/predict", json={"instances": instances}, headers=key
        )
        assert response.status_code == 200, response.text
    v2 = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW_TOY}]}
    assert harness.client.post("/v2/models/toy/infer", json=v2, headers=key).status_code == 200
    assert _repeats(harness.client, "acme") == 4


def test_a_capped_tenant_is_refused_after_enough_repeats_and_others_are_not(
    harness: Harness,
) -> None:
    capped = bearer(harness.add_tenant("capped", repeated_queries_per_minute=5))
    free = bearer(harness.add_tenant("free"))
    body = {"instances": [ROW_TOY]}
    codes = [
        harness.client.post("/v1/models/toy/predict", json=body, headers=capped).status_code
        for _ in range(6)  # the first is new, then 5 repeats: at the cap, not over it
    ]
    assert codes == [200] * 6
    refused = harness.client.post("/v1/models/toy/predict", json=body, headers=capped)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "repeated queries" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    fresh = {"instances": [[3.0, 1.0, 4.0, 1.5]]}  # a new row adds no repeat: served
    assert (
        harness.client.post("/v1/models/toy/predict", json=fresh, headers=capped).status_code == 200
    )
    for _ in range(12):
        response = harness.client.post("/v1/models/toy/predict", json=body, headers=free)
        assert response.status_code == 200, response.text
    assert _repeats(harness.client, "free") == 11


def test_with_the_monitor_off_nothing_is_counted_or_capped(settings: Settings) -> None:
    off = settings.model_copy(update={"repeat_monitor": False})
    with TestClient(create_app(off)) as client:
        assert client.app.state.services.repeats is None  # type: ignore[attr-defined]
        harness = Harness(client, off)
        key = bearer(harness.add_tenant("capped", repeated_queries_per_minute=1))
        for _ in range(5):
            response = client.post(
                "/v1/models/toy/predict", json={"instances": [ROW_TOY]}, headers=key
            )
            assert response.status_code == 200, response.text
        assert _repeats(client, "capped") == 0


def test_a_capped_tenant_never_runs_on_the_event_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = settings.model_copy(update={"tenant_cache_seconds": 60.0})
    assert _hops(cached, monkeypatch, {"repeated_queries_per_minute": 1000.0}, SMALL) == 3


def _awkward_rows(rng: np.random.Generator, n: int, features: int) -> NDArray[np.float32]:
    """Rows with every case `quantize` treats apart: zeros of both signs, denormals,
    values near the flush floor, huge and tiny scales, infinities, NaN rows."""
    scale = np.float32(10.0) ** rng.integers(-40, 38, size=(n, 1)).astype(np.float32)
    rows = (rng.normal(size=(n, features)) * scale).astype(np.float32)
    mask = rng.random((n, features))
    rows[mask < 0.05] = 0.0
    rows[(mask >= 0.05) & (mask < 0.1)] = -0.0
    rows[(mask >= 0.1) & (mask < 0.15)] = np.float32(1e-40)  # a float32 denormal
    top = np.abs(rows).max(axis=1, keepdims=True)
    near_floor = (top * np.float32(2.0**-16)).repeat(features, axis=1)
    rows[(mask >= 0.15) & (mask < 0.2)] = near_floor[(mask >= 0.15) & (mask < 0.2)]
    if n > 2:
        rows[1, 0] = np.inf
        rows[2, -1] = np.nan
    return rows


@pytest.mark.skipif(repeats._kernel is None, reason="no C kernel (tests/defense/test_kernel.py)")
@pytest.mark.parametrize("seed", range(8))
def test_the_compiled_quantize_gives_numpys_bits(seed: int) -> None:
    """The C pass (`_kernel.quantize_rows`) against the numpy code it replaces, bit for
    bit, on float32 rows with every awkward value, other dtypes (cast as astype
    casts), batches of more dimensions, views with strides, and rows of no features (the
    monitor never keys an empty batch)."""
    rng = np.random.default_rng(seed)
    rows = _awkward_rows(rng, 16, 1 + seed * 9)
    batches: list[NDArray[np.generic]] = [
        rows,
        rows.astype(np.float64) * (1 + 1e-9),  # rounds on the cast to float32
        rng.integers(-(2**31), 2**31 - 1, size=(5, 7), dtype=np.int64),
        rng.integers(0, 255, size=(3, 2, 4), dtype=np.uint8),
        np.clip(rows, -6e4, 6e4).astype(np.float16),
        rows[::2, ::-1],
        rows.reshape(16, 1, -1),
        np.zeros((3, 0), dtype=np.float32),
    ]
    for batch in batches:
        got = quantize(batch)
        expected = repeats._quantize_in_numpy(batch)
        assert got.dtype == expected.dtype == np.float32
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_quantize_refuses_what_is_not_a_batch_of_numbers() -> None:
    with pytest.raises(TypeError):
        quantize(np.float32(1.0))  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):  # numpy's code: ValueError
        quantize(np.array([["a", "b"]]))


@pytest.mark.skipif(repeats._kernel is None, reason="no C kernel (tests/defense/test_kernel.py)")
@pytest.mark.parametrize("bits", [64, 2**10, 2**20])
def test_the_compiled_one_key_step_sets_and_finds_the_bits_numpy_does(bits: int) -> None:
    """`observe_one` in C against the Python bit loop and the numpy batch path: the
    same answers and the same filter bytes, over repeated and fresh keys in both
    filters of the pair."""
    sketch = BloomSketch(bits)
    rng = np.random.default_rng(bits)
    keys = rng.integers(0, 2**64, size=300, dtype=np.uint64)
    keys = np.concatenate([keys, keys[:100], rng.integers(0, 2**64, size=50, dtype=np.uint64)])
    compiled, _ = sketch.empty_pair()
    python, _ = sketch.empty_pair()
    vectorized, filters = sketch.empty_pair()
    with pytest.MonkeyPatch.context() as patch:
        for i, key in enumerate(keys.tolist()):
            current = (i // 120) % 2  # alternate filters, as windows rotate
            found = sketch.observe_one(compiled, current, key)
            patch.setattr(repeats, "_kernel", None)
            assert sketch.observe_one(python, current, key) == found
            patch.undo()
            positions = sketch.positions(np.array([key], dtype=np.uint64))
            assert bool(sketch.found(filters, positions)[0]) == found
            sketch.add(filters[current], positions)
            assert compiled == python == vectorized, i


@pytest.mark.skipif(repeats._kernel is None, reason="no C kernel (tests/defense/test_kernel.py)")
def test_the_compiled_one_key_step_checks_its_filters() -> None:
    kernel = repeats._kernel
    assert kernel is not None
    pair = bytearray(16)
    assert kernel.bloom_observe_one(pair, 8, 0, 12345, 11) is False
    assert kernel.bloom_observe_one(pair, 8, 1, 12345, 11) is True  # found in filter 0
    for args in [
        (pair, 6, 0, 1, 11),
        (pair, 16, 0, 1, 11),
        (pair, 8, 2, 1, 11),
        (pair, 8, 0, 1, 0),
    ]:
        with pytest.raises(ValueError):
            kernel.bloom_observe_one(*args)
    with pytest.raises(TypeError):
        kernel.bloom_observe_one(bytes(16), 8, 0, 1, 11)
