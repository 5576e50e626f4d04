"""A one-row batch takes the monitor's bit-by-bit path (`BloomSketch.spots`, `found_one`,
`add_one`): it sets and finds exactly the bits of the vectorised path, so its counts and
its false positives are the Bloom filter's, as for any batch."""

from __future__ import annotations

import numpy as np
import pytest

from service.serving.repeats import BloomSketch, RepeatedQueryMonitor

SALT = b"a fixed salt: the tests' counts do not depend on the process"


def _keys(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64)


@pytest.mark.parametrize("bits", [64, 2**16, 2**32])
def test_spots_are_the_positions_of_the_vectorised_path(bits: int) -> None:
    sketch = BloomSketch(bits)
    keys = _keys(500, seed=bits % 97)
    byte, bit = sketch.positions(keys)
    for row, key in enumerate(keys.tolist()):
        spots = sketch.spots(key)
        assert [s >> 3 for s in spots] == byte[row].tolist()
        assert [1 << (s & 7) for s in spots] == bit[row].tolist()


def test_one_key_at_a_time_finds_and_sets_what_the_batch_path_does() -> None:
    sketch = BloomSketch(2**12)  # small: many keys collide, and some are found
    memory, filters = sketch.empty_pair()
    sketch.add(filters[1], sketch.positions(_keys(200, seed=1)))  # the previous window
    expected = filters.copy()
    for key in _keys(400, seed=2).tolist():
        one = np.array([key], dtype=np.uint64)
        positions = sketch.positions(one)
        assert sketch.found_one(memory, sketch.spots(key)) == bool(
            sketch.found(expected, positions)[0]
        )
        sketch.add_one(memory, 0, sketch.spots(key))
        sketch.add(expected[0], positions)
        assert np.array_equal(filters, expected)  # the array views the same bytes


def test_single_rows_count_as_the_same_rows_in_batches() -> None:
    rows = np.random.default_rng(3).normal(size=(300, 16)).astype(np.float32)
    rows[100:150] = rows[:50]  # exact repeats
    rows[200:210] = np.nextafter(rows[20:30], np.float32(np.inf))  # one-ulp steps
    single, batched = (
        RepeatedQueryMonitor(salt=SALT, sketch_bits=2**10),
        RepeatedQueryMonitor(salt=SALT, sketch_bits=2**10),
    )
    one_by_one = [single.observe("t", rows[i : i + 1]) for i in range(len(rows))]
    # The same rows through the vectorised path, two at a time (no pair repeats within).
    pairs = [batched.observe("t", rows[i : i + 2]) for i in range(0, len(rows), 2)]
    assert sum(one_by_one) == sum(pairs) >= 60
    assert single.recent("t") == batched.recent("t")


def test_false_positives_of_single_keys_match_the_bloom_filter_rate() -> None:
    """A filter filled key by key to its capacity (4,096 keys in 2^16 bits) finds a new
    key with probability (1 - exp(-11 / 16))^11 = 4.6e-4: 20,000 new keys give about 9,
    the very keys the vectorised lookup finds."""
    sketch = BloomSketch(2**16)
    memory, filters = sketch.empty_pair()
    for key in _keys(sketch.capacity, seed=5).tolist():
        sketch.add_one(memory, 0, sketch.spots(key))
    fresh = _keys(20_000, seed=6)
    found = [sketch.found_one(memory, sketch.spots(key)) for key in fresh.tolist()]
    assert found == sketch.found(filters, sketch.positions(fresh)).tolist()
    assert 1 <= sum(found) <= 25  # Poisson(9.2): outside with probability < 1e-4
