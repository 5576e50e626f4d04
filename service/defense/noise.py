"""Noise sources: fresh Gaussian draws, or draws keyed to (tenant, parameters, model, input).

Keyed ("sticky") noise, spec section 6: each row's noise comes from a seed
HMAC-SHA256(parameter key, model id + canonical bytes of the row), so the same
query always gets the same answer and averaging repeated queries gains nothing.
The parameter key is HMAC-SHA256(tenant secret, context + the tenant's defense
parameters, canonically encoded): a parameter change draws new noise for every
row. Were the draws kept, one answer before and one after a base_variance change
would solve for the clean logits (c = (rho c1 - c2) / (rho - 1)).
The per-row seed expands into normals with a counter-based generator
(SplitMix64 + Box-Muller) vectorised over the whole batch, because creating
one numpy Generator per row costs more than the whole request
(bench/micro-timings.md). Where the C extensions are built, the
HMAC loop runs in ``_keyed.c`` (OpenSSL), and the fresh-noise pool and the keyed
normals of a class-major batch in ``_kernel.c``; the Python code below gives the same
values (the kernel calls numpy's own log, cos and sin loops for the last bit).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._compiled import kernel as _kernel
from ._compiled import keyed as _keyed
from .params import DefenseParams, NoiseMode

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_SHIFT_11 = np.uint64(11)
_SHIFT_27 = np.uint64(27)
_SHIFT_30 = np.uint64(30)
_SHIFT_31 = np.uint64(31)
_TWO_PI = 2.0 * np.pi
_HMAC_BLOCK = 64  # SHA-256 block size in bytes (RFC 2104)
# Up to this many classes (and one ensemble member) the defense works on the batch
# transposed, class-major (k, n): reductions over a short last axis are several times
# slower in numpy than the same reductions across rows. Noise sources lay their draws
# out to match, so the defense reads them contiguously.
CLASS_MAJOR_MAX_CLASSES = 64


def class_major(ensemble_size: int, n_classes: int) -> bool:
    """Whether the defense processes (and the noise sources lay out) a batch class-major."""
    return ensemble_size == 1 and n_classes <= CLASS_MAJOR_MAX_CLASSES


# Domain separation of the parameter key from every other use of a tenant secret.
PARAMETER_KEY_CONTEXT = b"dynanoise keyed-noise parameter key v1\x00"
_DEFAULT_KEYED = DefenseParams(noise_mode=NoiseMode.KEYED)

_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))


def fresh_standard_normal(
    rng: np.random.Generator, n: int, ensemble_size: int, n_classes: int
) -> NDArray[np.float64]:
    """N(0, 1) draws of shape (n, ensemble_size, n_classes) from ``rng``."""
    return rng.standard_normal((n, ensemble_size, n_classes))


class StandardNormalPool:
    """Fresh N(0, 1) draws from ``rng``, generated in blocks and handed out once each.

    One ``rng.standard_normal`` call has a fixed cost however few values it returns,
    more than the whole one-row defense; drawing a block ahead and slicing it makes the
    per-request cost a lock and a slice. Every value is served to exactly one
    caller (thread-safe); a block is drawn on first use, never at construction, so
    a pool built before a fork is not shared by the children. With the C kernel the
    blocks are served by ``_kernel.NormalBlocks`` (the GIL is its lock; a tenth of
    the cost), in the same order (bench/micro-timings.md).
    """

    def __init__(self, rng: np.random.Generator, block_size: int = 16_384) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self._rng = rng
        self._block_size = block_size
        self._lock = threading.Lock()
        self._block: NDArray[np.float64] = np.empty(0)
        self._used = 0
        self._compiled = (
            None
            if _kernel is None
            else _kernel.NormalBlocks(rng.standard_normal, block_size, CLASS_MAJOR_MAX_CLASSES)
        )

    def take(self, count: int) -> NDArray[np.float64]:
        """``count`` standard normal draws, shape (count,), never served before."""
        if self._compiled is not None:
            return self._compiled.take(count)
        if count > self._block_size:
            with self._lock:
                return self._rng.standard_normal(count)
        with self._lock:
            start = self._used
            if start + count > self._block.shape[0]:
                # A new array, not a refill in place: earlier slices stay valid.
                self._block = self._rng.standard_normal(self._block_size)
                start = 0
            self._used = start + count
            block = self._block
        return block[start : start + count]

    @property
    def compiled(self) -> Any | None:
        """The C kernel's ``NormalBlocks`` serving these draws, or None: its
        ``defend_entropy`` runs the defense on the next draws in one call."""
        return self._compiled

    def draws(self, n: int, ensemble_size: int, n_classes: int) -> NDArray[np.float64]:
        """Draws of shape (n, ensemble_size, n_classes), in the memory layout the defense
        reads fastest (a transposed view when ``class_major``)."""
        if self._compiled is not None:
            return self._compiled.draws(n, ensemble_size, n_classes)
        flat = self.take(n * ensemble_size * n_classes)
        if n > 1 and class_major(ensemble_size, n_classes):
            return flat.reshape(n_classes, n).T[:, None, :]
        return flat.reshape(n, ensemble_size, n_classes)


def canonical_rows(inputs: NDArray[np.generic]) -> NDArray[np.float32]:
    """The bytes that identify a query: float32, C order, -0.0 folded into 0.0."""
    rows = np.ascontiguousarray(inputs, dtype=np.float32)
    return rows + np.float32(0.0)  # -0.0 + 0.0 == +0.0, so both spell the same query


LOGIT_KEY_STEP = 1.0
"""keyed_logits quantizes the clean logits to this many sigma0 (sqrt(base_variance))."""
_MAX_LOGIT_CELL = float(2**24)  # float32 holds every integer up to here exactly


def quantized_logits(logits: NDArray[np.generic], params: DefenseParams) -> NDArray[np.float32]:
    """floor(z / (LOGIT_KEY_STEP sigma0)) per class, as float32 integers: the key of
    keyed_logits noise. Inputs that move the logits by much less than the noise's
    scale (one-ulp steps, invisible pixel changes) land in the same cell with
    probability about 1 - k |dz| / step, and so get the same noise as the original."""
    step = LOGIT_KEY_STEP * float(np.sqrt(params.base_variance))
    if _kernel is not None:  # the same bits in one C pass (a tenth of numpy's time)
        cells = _kernel.logit_cells(logits, step, _MAX_LOGIT_CELL)
        if cells is not None:
            return cells
    z = np.asarray(logits, dtype=np.float64)
    cells = np.floor(z / step)
    np.clip(cells, -_MAX_LOGIT_CELL, _MAX_LOGIT_CELL, out=cells)
    return cells.astype(np.float32)


def parameter_key(secret: bytes, params: DefenseParams) -> bytes:
    """HMAC-SHA256(secret, PARAMETER_KEY_CONTEXT || params.canonical()): the key that
    seeds keyed noise under ``params``. Equal parameters give the same key (so going
    back to earlier parameters gives back the earlier answers, not new draws);
    any change of any parameter gives an unrelated one."""
    return hmac.digest(secret, PARAMETER_KEY_CONTEXT + params.canonical(), "sha256")


class KeyedSeeder:
    """Per-row seeds for one (tenant secret, defense parameters, model id):
    ``keyed_seeds`` with the HMAC key schedule done once.

    The row HMAC is keyed by ``parameter_key(secret, params)``. HMAC(K, m) =
    H((K ^ opad) || H((K ^ ipad) || m)); the two padded-key states (and the
    model/shape prefix of m) are hashed at construction and copied per row (the C
    loop does the same once per batch, from the same derived key). Holds a key
    derived from the secret: keep it server side, like the secret.
    """

    __slots__ = (
        "_key",
        "_model_id",
        "_outer",
        "_prefixed",
        "_prefixes",
        "_secret_inner",
        "params",
    )

    def __init__(self, secret: bytes, model_id: str, params: DefenseParams | None = None) -> None:
        """``params``: the tenant's defense parameters (default: the paper's setting
        in keyed mode); the seeds are bound to them."""
        self.params = _DEFAULT_KEYED if params is None else params
        key = parameter_key(secret, self.params)  # 32 bytes: never longer than a block
        self._key = key  # for the compiled loop, which pads it itself
        key = key.ljust(_HMAC_BLOCK, b"\x00")
        self._secret_inner = hashlib.sha256(key.translate(_INNER_PAD))
        self._outer = hashlib.sha256(key.translate(_OUTER_PAD))
        self._model_id = model_id
        self._prefixed: dict[tuple[int, ...], hashlib._Hash] = {}
        self._prefixes: dict[tuple[int, ...], bytes] = {}

    def _prefix_for(self, sample_shape: tuple[int, ...]) -> bytes:
        prefix = self._prefixes.get(sample_shape)
        if prefix is None:
            prefix = _row_prefix(self._model_id, sample_shape)
            if len(self._prefixes) < 16:  # as _inner_for
                self._prefixes[sample_shape] = prefix
        return prefix

    def _inner_for(self, sample_shape: tuple[int, ...]) -> hashlib._Hash:
        inner = self._prefixed.get(sample_shape)
        if inner is None:
            inner = self._secret_inner.copy()
            inner.update(_row_prefix(self._model_id, sample_shape))
            if len(self._prefixed) < 16:  # a model has one sample shape; bound it anyway
                self._prefixed[sample_shape] = inner
        return inner

    def seeds(self, inputs: NDArray[np.generic]) -> NDArray[np.uint64]:
        """One 64-bit seed per row, equal to ``keyed_seeds(secret, model_id, inputs, params)``."""
        if _keyed is not None:  # the same HMAC in C, the whole batch in one call
            # (which reads -0.0 as +0.0 itself, so canonical_rows is not called here)
            rows = np.ascontiguousarray(inputs, dtype=np.float32)
            return _keyed.hmac_seeds(self._key, self._prefix_for(rows.shape[1:]), rows)
        rows = canonical_rows(inputs)
        n = rows.shape[0]
        if n == 0:
            return np.empty(0, dtype=np.uint64)
        inner = self._inner_for(tuple(rows.shape[1:]))
        outer = self._outer
        digests = []
        flat: Any = rows.reshape(n, -1)  # rows are C-contiguous buffers for hashlib
        for row in flat:
            h = inner.copy()
            h.update(row)
            o = outer.copy()
            o.update(h.digest())
            digests.append(o.digest())
        # The first 8 bytes of each 32-byte digest, read little-endian.
        return np.frombuffer(b"".join(digests), dtype="<u8")[::4].astype(np.uint64)


def _row_prefix(model_id: str, sample_shape: tuple[int, ...]) -> bytes:
    return model_id.encode() + b"\x00" + repr(sample_shape).encode() + b"\x00"


def keyed_seeds(
    secret: bytes,
    model_id: str,
    inputs: NDArray[np.generic],
    params: DefenseParams | None = None,
) -> NDArray[np.uint64]:
    """One 64-bit seed per row: the first 8 bytes, read little-endian, of
    HMAC-SHA256(parameter_key(secret, params), model_id || 0x00 || row shape || 0x00 ||
    canonical row bytes); ``params`` default to the paper's setting in keyed mode."""
    return KeyedSeeder(secret, model_id, params).seeds(inputs)


@lru_cache(maxsize=64)
def _counter_offsets(n_values: int) -> NDArray[np.uint64]:
    """(j + 1) * gamma for j < n_values, as a column: the SplitMix64 counter offsets."""
    with np.errstate(over="ignore"):
        offsets = np.arange(1, n_values + 1, dtype=np.uint64) * _GOLDEN_GAMMA
    offsets.setflags(write=False)
    return offsets[:, None]


def keyed_standard_normal(
    seeds: NDArray[np.uint64], ensemble_size: int, n_classes: int
) -> NDArray[np.float64]:
    """N(0, 1) draws of shape (n, ensemble_size, n_classes), a pure function of ``seeds``.

    Counter-based: uniform u_j = SplitMix64(seed + (j + 1) * gamma) / 2^64, then
    Box-Muller turns each pair (u1, u2) into sqrt(-2 ln u1) * (cos, sin)(2 pi u2).
    The values do not depend on the memory layout, which follows ``class_major``
    (value-major, a transposed view, for few classes; row-major otherwise).
    """
    per_row = ensemble_size * n_classes
    n_pairs = (per_row + 1) // 2
    seeds = np.asarray(seeds, dtype=np.uint64)
    n = seeds.shape[0]
    transposed = class_major(ensemble_size, n_classes)
    if transposed and _kernel is not None:
        # The same values in one C pass, with numpy's own log, cos and sin loops
        # (`_kernel.keyed_normals`): a one-row request's draws cost 12 us in numpy.
        normals = _kernel.keyed_normals(seeds, per_row)
        if normals is not None:
            return normals[:per_row].T.reshape(n, ensemble_size, n_classes)
    offsets = _counter_offsets(2 * n_pairs)
    with np.errstate(over="ignore"):
        # state[j, i] (transposed) or state[i, j]: counter j of seed i
        state = offsets + seeds[None, :] if transposed else seeds[:, None] + offsets.T
        mixed = state >> _SHIFT_30
        state ^= mixed
        state *= _MIX_1
        np.right_shift(state, _SHIFT_27, out=mixed)
        state ^= mixed
        state *= _MIX_2
        np.right_shift(state, _SHIFT_31, out=mixed)
        state ^= mixed
        state >>= _SHIFT_11
    # 53 high bits -> uniform in the open interval (0, 1), so log never sees 0.
    uniform = state.astype(np.float64)
    uniform += 0.5
    uniform *= 1.0 / 2.0**53
    if not transposed:
        uniform = uniform.T  # the value axis first, as below; a view
    radius = np.log(uniform[:n_pairs])
    radius *= -2.0
    np.sqrt(radius, out=radius)
    angle = uniform[n_pairs:]
    angle *= _TWO_PI
    # Value-major view either way; row-major memory when not transposed.
    normals = np.empty((2 * n_pairs, n)) if transposed else np.empty((n, 2 * n_pairs)).T
    np.cos(angle, out=normals[:n_pairs])
    normals[:n_pairs] *= radius
    np.sin(angle, out=normals[n_pairs:])
    normals[n_pairs:] *= radius
    return normals[:per_row].T.reshape(n, ensemble_size, n_classes)


class DirectNormals:
    """Fresh draws straight from ``rng``, one ``standard_normal`` call a batch: the
    audit's source, whose stream is reproducible from its seed alone."""

    def __init__(self, rng: np.random.Generator | None) -> None:
        self._rng = rng

    def draws(self, n: int, ensemble_size: int, n_classes: int) -> NDArray[np.float64]:
        if self._rng is None:
            raise ValueError("fresh noise needs a numpy Generator")
        return fresh_standard_normal(self._rng, n, ensemble_size, n_classes)


FreshNormals = StandardNormalPool | DirectNormals


class NoiseSource:
    """The N(0, 1) draws DynaNoise needs, from the source a tenant's noise mode names.

    fresh: from ``fresh`` (a `StandardNormalPool` when serving, `DirectNormals` in the
    audit); keyed: from HMAC(parameter key, model id + row) seeds (`KeyedSeeder`, kept
    per (secret, model id) for the parameters last seen, at most ``max_seeders``).
    Serving and the audit both draw through one of these, so the two cannot drift apart.
    """

    def __init__(self, fresh: FreshNormals, *, max_seeders: int = 1024) -> None:
        self._fresh = fresh
        # The compiled pool behind fresh draws, when there is one (`defend_from`).
        self.compiled_fresh = fresh.compiled if isinstance(fresh, StandardNormalPool) else None
        self._max_seeders = max_seeders
        self._seeders: dict[tuple[bytes, str], KeyedSeeder] = {}
        self._lock = threading.Lock()

    def draws(
        self,
        params: DefenseParams,
        n: int,
        n_classes: int,
        *,
        inputs: NDArray[np.generic] | None = None,
        secret: bytes | None = None,
        model_id: str = "",
        logits: NDArray[np.generic] | None = None,
    ) -> NDArray[np.float64] | None:
        """Draws of shape (n, ensemble_size, n_classes), or None when ``params`` add no
        noise. Keyed mode needs the tenant ``secret`` and the raw ``inputs``;
        keyed_logits the ``secret`` and the clean ``logits``."""
        if not params.adds_noise:
            return None
        mode = params.noise_mode
        if mode is NoiseMode.FRESH:
            return self._fresh.draws(n, params.ensemble_size, n_classes)
        if mode is NoiseMode.KEYED:
            keyed_on, needs = inputs, "inputs"
        else:
            keyed_on, needs = logits, "clean logits"
            if logits is not None:
                keyed_on = quantized_logits(logits, params)
        if secret is None or keyed_on is None:
            raise ValueError(f"{mode} noise needs the tenant secret and the {needs}")
        seeds = self.seeder(secret, model_id, params).seeds(keyed_on)
        return keyed_standard_normal(seeds, params.ensemble_size, n_classes)

    def seeder(self, secret: bytes, model_id: str, params: DefenseParams) -> KeyedSeeder:
        """The (cached) seeder of one tenant secret, model and parameters. A tenant's
        parameters rarely change (and are one object while they do not), so one seeder
        per (secret, model) is kept: a change of parameters replaces it."""
        key = (secret, model_id)
        seeder = self._seeders.get(key)
        if seeder is not None and seeder.params is not params:
            if seeder.params == params:
                seeder.params = params  # a reloaded tenant, same values: compare once
            else:
                seeder = None
        if seeder is None:
            seeder = KeyedSeeder(secret, model_id, params)
            with self._lock:
                if key not in self._seeders and len(self._seeders) >= self._max_seeders:
                    self._seeders.pop(next(iter(self._seeders)))
                self._seeders[key] = seeder
        return seeder
