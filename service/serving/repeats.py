"""Seeing repeated queries: a per-tenant count of rows that (nearly) repeat a recent row.

An attacker undoes a noisy defense by asking one row many times, exactly or as copies
changed imperceptibly, and averaging the answers. `RepeatedQueryMonitor` counts such
rows per tenant from a bounded sketch of coarse row keys, so its memory does not grow
with traffic; the data plane exports the count and may cap it. What the key forgives,
what the sketch costs and where it stops: docs/privacy-monitoring.md.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..defense._compiled import kernel as _kernel
from ..defense.noise import KeyedSeeder

KEPT_MANTISSA_BITS = 8
"""Mantissa bits a feature keeps in its key (of float32's 23): a step of 2^-8 of the
feature's power of two, so one key spans 0.2-0.4 % of the feature's value."""
FLUSH_BELOW = 2.0**-16
"""Features smaller in magnitude than this fraction of the row's largest are keyed as
0, as are float32 denormals (below 2^-126) in any row."""
BITS_PER_KEY = 16
"""Bloom filter bits per key at capacity: a filter of m bits holds m / 16 keys."""

_SMALLEST_NORMAL32 = np.float32(2.0**-126)
_DROPPED_BITS = 23 - KEPT_MANTISSA_BITS  # float32 mantissa bits rounded away
# Rounding adds this to the bits before the dropped ones are cut: 0.618... of a step
# (the golden ratio's fraction, 15 bits of it), not a half, so that the boundaries sit
# at 0.382 of a step: a value with few significant bits (k/16, 0.25, a float32 drawn
# on a coarse grid) is never within one ulp of one, as it can be of a half step.
_ROUND_OFFSET = np.uint32(round(0.6180339887498949 * 2**_DROPPED_BITS))
_KEEP_MASK = np.uint32(~((1 << _DROPPED_BITS) - 1) & 0xFFFFFFFF)
_KEY_CONTEXT = "dynanoise repeated-query key"


def quantize(batch: NDArray[np.generic]) -> NDArray[np.float32]:
    """Coarse form of each row of ``batch`` (n, ...): (n, features) float32.

    A feature is flushed to +0 when ``|x| < max(FLUSH_BELOW * max_j |x_j|, 2^-126)``
    (relative to the row's scale; denormals always); else its float32 mantissa is
    rounded to ``KEPT_MANTISSA_BITS`` bits, with boundaries at 0.382 of a step (see
    _ROUND_OFFSET). Rounding each feature by its own exponent, not to a grid set by
    the row's scale, keeps a change to one feature from moving any other. A one-ulp
    step (2^-23 relative) moves a feature across a boundary only from the one float32
    value next to it on either side, 2 in 2^15 of a step's values: about 2^-15 a
    stepped feature in the step's direction (0 for values on a coarse grid, like the
    digits' k/16), so a row of 64 features all stepped keeps its key with probability
    about 1 - 64 * 2^-15 = 99.8 %. Denormals, tiny values written into zero features
    and the sign of zero do not move the key. Other dtypes are keyed as float32.
    """
    if _kernel is not None:  # the same bits in one pass (service/defense/_kernel.c)
        return _kernel.quantize_rows(
            np.asarray(batch), FLUSH_BELOW, int(_ROUND_OFFSET), int(_KEEP_MASK)
        )
    return _quantize_in_numpy(batch)


def _quantize_in_numpy(batch: NDArray[np.generic]) -> NDArray[np.float32]:
    """`quantize` where the C kernel is not built."""
    rows = np.asarray(batch).reshape(len(batch), -1).astype(np.float32, copy=False)
    magnitude = np.abs(rows)
    floor = magnitude.max(axis=1, keepdims=True, initial=0.0)
    floor *= np.float32(FLUSH_BELOW)
    np.maximum(floor, _SMALLEST_NORMAL32, out=floor)
    bits = rows.view(np.uint32) + _ROUND_OFFSET  # a new array: the batch is not touched
    bits &= _KEEP_MASK
    bits[magnitude < floor] = 0
    return bits.view(np.float32)


class RowHasher:
    """Keyed 64-bit hashes of quantized rows: HMAC-SHA256 of each row's `quantize`d
    bytes under a random per-process key (the keyed-noise seeder, in C over the whole
    batch where built), so keys say nothing about the rows outside this process."""

    def __init__(self, salt: bytes | None = None) -> None:
        self._seeder = KeyedSeeder(
            salt if salt is not None else secrets.token_bytes(32), _KEY_CONTEXT
        )

    def __call__(self, batch: NDArray[np.generic]) -> NDArray[np.uint64]:
        """One key per row of ``batch`` (n, ...)."""
        return self._seeder.seeds(quantize(batch))


class BloomSketch:
    """Where keys go in a pair of Bloom filters of ``bits`` bits each (a power of two).

    Each key sets ``hashes`` bits, ``g_i = h1 + i * h2 mod m`` (Kirsch-Mitzenmacher
    double hashing; h1, h2 the key's two 32-bit halves, h2 odd so that the g_i differ).
    With ``capacity = bits / 16`` keys inserted and k = round(16 ln 2) = 11 hashes, a
    key not inserted is found in a filter with probability ``(1 - exp(-k n / m))^k``
    = 4.6e-4 (`false_positive_rate`). The filters of a pair are the rows of one
    (2, bits / 8) byte array, so a lookup in both is one gather.
    """

    def __init__(self, bits: int) -> None:
        if bits < 64 or bits & (bits - 1) or bits > 2**32:
            raise ValueError("bits must be a power of two from 64 to 2**32")
        self.bits = bits
        self.capacity = bits // BITS_PER_KEY
        self.hashes = max(1, round(BITS_PER_KEY * math.log(2)))
        self._steps = np.arange(self.hashes, dtype=np.uint32)
        self._mask = np.uint32(bits - 1)

    def false_positive_rate(self, keys: int | None = None) -> float:
        """Chance that a key not inserted is found in one filter after ``keys`` distinct
        keys (default: ``capacity``) went into it."""
        n = self.capacity if keys is None else keys
        return float((1.0 - math.exp(-self.hashes * n / self.bits)) ** self.hashes)

    def empty_pair(self) -> tuple[bytearray, NDArray[np.uint8]]:
        """Two cleared filters: their bytes (filter ``f``'s byte ``i`` at
        ``f * bits / 8 + i``), through which one key is looked up byte by byte
        (`found_one`, `add_one`), and a (2, bits / 8) array over the same memory."""
        memory = bytearray(self.bits // 4)
        return memory, np.frombuffer(memory, dtype=np.uint8).reshape(2, -1)

    def spots(self, key: int) -> list[int]:
        """The ``hashes`` bit positions of one key, as `positions` computes them (Python
        integers: the sum is taken mod m directly, which the uint32 wrap-around there
        leaves unchanged, m dividing 2^32)."""
        first = key & 0xFFFFFFFF
        step = (key >> 32) | 1
        mask = self.bits - 1
        return [(first + i * step) & mask for i in range(self.hashes)]

    def found_one(self, pair: bytearray, spots: list[int]) -> bool:
        """Whether either filter of ``pair`` (`empty_pair`'s bytes) has all of one key's bits;
        `found` for a single key, without numpy's per-call cost (a key not inserted
        usually misses on its first bit)."""
        second = self.bits // 8
        for offset in (0, second):
            for spot in spots:
                if not pair[offset + (spot >> 3)] & (1 << (spot & 7)):
                    break
            else:
                return True
        return False

    def observe_one(self, pair: bytearray, current: int, key: int) -> bool:
        """`found_one` then `add_one` for one key: whether either filter of ``pair`` had
        it, after which filter ``current`` has it (one C call where the kernel is built,
        bit for bit the same)."""
        if _kernel is not None:
            return bool(_kernel.bloom_observe_one(pair, self.bits // 8, current, key, self.hashes))
        spots = self.spots(key)
        found = self.found_one(pair, spots)
        self.add_one(pair, current, spots)
        return found

    def add_one(self, pair: bytearray, current: int, spots: list[int]) -> None:
        """Set one key's bits in filter ``current`` of ``pair`` (`empty_pair`'s bytes)."""
        offset = current * (self.bits // 8)
        for spot in spots:
            pair[offset + (spot >> 3)] |= 1 << (spot & 7)

    def positions(self, keys: NDArray[np.uint64]) -> tuple[NDArray[np.intp], NDArray[np.uint8]]:
        """(byte index, bit mask) of each of the ``hashes`` bits of each key: (n, hashes)."""
        halves = np.ascontiguousarray(keys, dtype=np.uint64).view(np.uint32).reshape(-1, 2)
        # uint32 arithmetic wraps mod 2^32, a multiple of m
        spots = (halves[:, 1:] | np.uint32(1)) * self._steps
        spots += halves[:, :1]
        spots &= self._mask
        return (spots >> np.uint32(3)).astype(np.intp), _BIT_OF[spots & np.uint32(7)]

    @staticmethod
    def found(
        pair: NDArray[np.uint8], positions: tuple[NDArray[np.intp], NDArray[np.uint8]]
    ) -> NDArray[np.bool_]:
        """Per key, whether either filter of ``pair`` has all its bits."""
        byte, bit = positions
        hits: NDArray[np.bool_] = np.asarray((np.take(pair, byte, axis=1) & bit).all(axis=2))
        return hits[0] | hits[1]

    @staticmethod
    def add(
        bloom: NDArray[np.uint8], positions: tuple[NDArray[np.intp], NDArray[np.uint8]]
    ) -> None:
        """Set every key's bits in one filter."""
        byte, bit = positions
        np.bitwise_or.at(bloom, byte.ravel(), bit.ravel())


_BIT_OF = np.left_shift(np.uint8(1), np.arange(8, dtype=np.uint8))


@dataclass(slots=True)
class _TenantWindow:
    """A tenant's two filters (``current`` indexes this window's, the other is the
    last window's), as bytes and as an array over them, and its repeat counts in both."""

    memory: bytearray
    filters: NDArray[np.uint8]
    started: float
    current: int = 0
    repeats: int = 0
    previous_repeats: int = 0


class RepeatedQueryMonitor:
    """Counts, per tenant, the rows that repeat a row seen in the last one or two windows.

    A row is keyed by `RowHasher` (a keyed hash of its `quantize`d form, so one-ulp
    steps and denormals keep the key) and looked up in two Bloom filters, the current
    window's and the previous one's; it is a repeat if found in either, or if an earlier
    row of the same batch has its key; then it is added to the current filter. Every
    ``window_seconds`` the current filter becomes the previous one and a cleared one
    takes its place, so a key is remembered for one to two windows. Memory is fixed:
    two filters of ``sketch_bits`` bits per tenant (256 KiB at 2^20 bits), for at most
    ``max_tenants`` tenants (least recently seen forgotten first).

    False positives: at ``sketch_bits / 16`` distinct rows per window (65,536 at 2^20),
    a new row is found in one filter with probability 4.6e-4 (`BloomSketch`), in either
    of the two at most 9.2e-4; far below capacity the rate is negligible (1,797 rows:
    about 1e-19). Distinct rows whose features all lie within the quantization step
    of each other's share a key: that is the point, not a false positive of the sketch.
    Thread-safe: keys are hashed outside the lock, filters touched inside.
    """

    def __init__(
        self,
        *,
        window_seconds: float = 60.0,
        sketch_bits: int = 2**20,
        max_tenants: int = 256,
        salt: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window_seconds > 0 or not math.isfinite(window_seconds):
            raise ValueError("window_seconds must be a finite number > 0")
        if max_tenants < 1:
            raise ValueError("max_tenants must be >= 1")
        self.window_seconds = float(window_seconds)
        self.max_tenants = max_tenants
        self.sketch = BloomSketch(sketch_bits)
        self._hasher = RowHasher(salt)
        self._clock = clock
        self._lock = threading.Lock()
        self._tenants: OrderedDict[str, _TenantWindow] = OrderedDict()

    def observe(self, tenant: str, batch: NDArray[np.generic]) -> int:
        """Record the rows of ``batch`` (n, ...) for ``tenant``; return how many of them
        repeat a recent row (within-batch duplicates included)."""
        n = len(batch)
        if n == 0:
            return 0
        keys = self._hasher(batch)
        sketch = self.sketch
        if n == 1:  # the usual request: bit by bit, no numpy call per step
            key = int(keys[0])
            with self._lock:
                window = self._window(tenant, create=True)
                assert window is not None
                count = int(sketch.observe_one(window.memory, window.current, key))
                window.repeats += count
            return count
        positions = sketch.positions(keys)
        with self._lock:
            window = self._window(tenant, create=True)
            assert window is not None
            repeated = self.sketch.found(window.filters, positions)
            self.sketch.add(window.filters[window.current], positions)
            count = int(np.count_nonzero(repeated))
            # A row whose key an earlier row of the batch has, if not yet found.
            _, first = np.unique(keys, return_index=True)
            count += n - len(first) - int(np.count_nonzero(np.delete(repeated, first)))
            window.repeats += count
        return count

    def recent(self, tenant: str) -> int:
        """Repeats counted for ``tenant`` in the current window."""
        with self._lock:
            window = self._window(tenant, create=False)
            return 0 if window is None else window.repeats

    def per_minute(self, tenant: str) -> float:
        """``tenant``'s repeats per minute over the last window, sliding: this window's
        count plus the previous window's weighted by the part of it still within one
        window of now (the sliding-window counter estimate)."""
        with self._lock:
            window = self._window(tenant, create=False)
            if window is None:
                return 0.0
            elapsed = (self._clock() - window.started) / self.window_seconds
            count = window.repeats + window.previous_repeats * (1.0 - elapsed)
        return count * 60.0 / self.window_seconds

    def seconds_until_under(self, tenant: str, cap_per_minute: float) -> float:
        """0 when ``tenant``'s `per_minute` is at most ``cap_per_minute``; else how long
        until it is, if no more repeats come."""
        with self._lock:
            window = self._window(tenant, create=False)
            if window is None:
                return 0.0
            length = self.window_seconds
            allowed = cap_per_minute * length / 60.0  # repeats per window
            elapsed = self._clock() - window.started
            current, previous = window.repeats, window.previous_repeats
        if current + previous * (1.0 - elapsed / length) <= allowed:
            return 0.0
        if current <= allowed:  # the previous window's share decays below the cap
            return max(length * (1.0 - (allowed - current) / previous) - elapsed, 0.0)
        # this window's count must become the previous one and decay
        return length - elapsed + length * (1.0 - allowed / current)

    def memory_bytes(self) -> int:
        """Bytes held by every tracked tenant's filters."""
        with self._lock:
            return sum(window.filters.nbytes for window in self._tenants.values())

    def tenants(self) -> list[str]:
        """The tenants tracked now, least recently seen first."""
        with self._lock:
            return list(self._tenants)

    def _window(self, tenant: str, *, create: bool) -> _TenantWindow | None:
        """``tenant``'s filters rotated to now, marked most recently seen (under the lock)."""
        now = self._clock()
        window = self._tenants.get(tenant)
        if window is None:
            if not create:
                return None
            if len(self._tenants) >= self.max_tenants:
                self._tenants.popitem(last=False)
            window = _TenantWindow(*self.sketch.empty_pair(), now)
            self._tenants[tenant] = window
            return window
        self._tenants.move_to_end(tenant)
        passed = math.floor((now - window.started) / self.window_seconds)
        if passed >= 1:
            if passed == 1:  # this window's filter becomes the previous one
                window.previous_repeats = window.repeats
                window.current = 1 - window.current
            else:  # two windows or more: both forgotten
                window.filters[window.current].fill(0)
                window.previous_repeats = 0
            window.filters[window.current].fill(0)
            window.repeats = 0
            window.started += passed * self.window_seconds
        return window
