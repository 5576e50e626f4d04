"""Named random generators: one audit seed, an independent stream per purpose."""

from __future__ import annotations

import zlib

import numpy as np


def stable_rng(seed: int, *words: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and the given names (not on call order)."""
    return np.random.default_rng([seed, *(zlib.crc32(w.encode()) for w in words)])
