"""Noise sources: fresh Gaussian draws, or draws keyed to (tenant, model, input).

Keyed ("sticky") noise, spec section 6: each row's noise comes from a seed
HMAC-SHA256(tenant secret, model id + canonical bytes of the row), so the same
query always gets the same answer and averaging repeated queries gains nothing.
The per-row seed expands into normals with a counter-based generator
(SplitMix64 + Box-Muller) vectorised over the whole batch, because creating
one numpy Generator per row costs ~40 us.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from numpy.typing import NDArray

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_TWO_PI = 2.0 * np.pi


def fresh_standard_normal(
    rng: np.random.Generator, n: int, ensemble_size: int, n_classes: int
) -> NDArray[np.float64]:
    """N(0, 1) draws of shape (n, ensemble_size, n_classes) from ``rng``."""
    return rng.standard_normal((n, ensemble_size, n_classes))


def canonical_rows(inputs: NDArray[np.generic]) -> NDArray[np.float32]:
    """The bytes that identify a query: float32, C order, -0.0 folded into 0.0."""
    rows = np.ascontiguousarray(inputs, dtype=np.float32)
    return rows + np.float32(0.0)  # -0.0 + 0.0 == +0.0, so both spell the same query


def keyed_seeds(secret: bytes, model_id: str, inputs: NDArray[np.generic]) -> NDArray[np.uint64]:
    """One 64-bit seed per row: the first 8 bytes of
    HMAC-SHA256(secret, model_id || 0x00 || row shape || canonical row bytes)."""
    rows = canonical_rows(inputs)
    n = rows.shape[0]
    flat = rows.reshape(n, -1)
    prefix = model_id.encode() + b"\x00" + repr(tuple(rows.shape[1:])).encode() + b"\x00"
    seeds = np.empty(n, dtype=np.uint64)
    for i in range(n):
        digest = hmac.digest(secret, prefix + flat[i].tobytes(), hashlib.sha256)
        seeds[i] = int.from_bytes(digest[:8], "little")
    return seeds


def keyed_standard_normal(
    seeds: NDArray[np.uint64], ensemble_size: int, n_classes: int
) -> NDArray[np.float64]:
    """N(0, 1) draws of shape (n, ensemble_size, n_classes), a pure function of ``seeds``.

    Counter-based: uniform u_j = SplitMix64(seed + (j + 1) * gamma) / 2^64, then
    Box-Muller turns each pair (u1, u2) into sqrt(-2 ln u1) * (cos, sin)(2 pi u2).
    """
    per_row = ensemble_size * n_classes
    n_pairs = (per_row + 1) // 2
    counters = np.arange(1, 2 * n_pairs + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        state = seeds.astype(np.uint64)[:, None] + counters[None, :] * _GOLDEN_GAMMA
        state = (state ^ (state >> np.uint64(30))) * _MIX_1
        state = (state ^ (state >> np.uint64(27))) * _MIX_2
        state ^= state >> np.uint64(31)
    # 53 high bits -> uniform in the open interval (0, 1), so log never sees 0.
    uniform = ((state >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 2.0**53)
    radius = np.sqrt(-2.0 * np.log(uniform[:, :n_pairs]))
    angle = _TWO_PI * uniform[:, n_pairs:]
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return normals[:, :per_row].reshape(-1, ensemble_size, n_classes)
