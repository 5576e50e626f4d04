"""The paper's data split (spec §3), seeded and reproducible.

    rows -> test (kept apart) + train pool
    pool -> 70 % target / 30 % shadow
    target -> 80 % members (the target model's training set) / 20 % non-members
    shadow -> 50 % shadow-in / 50 % shadow-out
    attack evaluation set: all non-members + as many sampled members (balanced)

Every array holds row indices of the data set, sorted ascending.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

Indices = NDArray[np.int64]

# Names of the index arrays, in the order they are hashed.
SPLIT_PARTS = (
    "target_members",
    "target_nonmembers",
    "shadow_in",
    "shadow_out",
    "test",
    "eval_members",
    "eval_nonmembers",
)

# Manifest keys for the arrays (the manifest's public names differ for the first two).
_MANIFEST_KEYS = {
    "target_members": "members",
    "target_nonmembers": "non_members",
    "shadow_in": "shadow_in",
    "shadow_out": "shadow_out",
    "test": "test",
    "eval_members": "eval_members",
    "eval_nonmembers": "eval_non_members",
}


@dataclass(frozen=True, eq=False)
class Split:
    """Disjoint index arrays of one data set; `eval_*` are subsets of the target's."""

    seed: int
    target_members: Indices
    target_nonmembers: Indices
    shadow_in: Indices
    shadow_out: Indices
    test: Indices
    eval_members: Indices
    eval_nonmembers: Indices

    @property
    def split_hash(self) -> str:
        """sha256 over each part's name and int64 little-endian bytes; first 16 hex digits."""
        digest = hashlib.sha256()
        for part in SPLIT_PARTS:
            digest.update(part.encode())
            digest.update(np.ascontiguousarray(getattr(self, part), dtype="<i8").tobytes())
        return digest.hexdigest()[:16]

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's "split" object: seed, hash and plain int lists."""
        out: dict[str, Any] = {"seed": self.seed, "hash": self.split_hash}
        out.update({key: getattr(self, part).tolist() for part, key in _MANIFEST_KEYS.items()})
        return out

    @classmethod
    def from_manifest(cls, record: Mapping[str, Any]) -> Split:
        """Rebuild a split from a manifest's "split" object; checks the stored hash."""
        arrays = {part: _indices(record[key]) for part, key in _MANIFEST_KEYS.items()}
        split = cls(seed=int(record["seed"]), **arrays)
        if "hash" in record and record["hash"] != split.split_hash:
            raise ValueError(
                f"split hash mismatch: stored {record['hash']}, computed {split.split_hash}"
            )
        return split


def _indices(values: Sequence[int] | NDArray[Any]) -> Indices:
    return np.sort(np.asarray(values, dtype=np.int64))


def _cut(rows: Indices, fraction: float) -> tuple[Indices, Indices]:
    """First round(fraction * n) rows, and the rest."""
    k = round(fraction * len(rows))
    return rows[:k], rows[k:]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


def paper_split(
    n: int,
    *,
    seed: int,
    test_fraction: float = 0.2,
    test_indices: Sequence[int] | NDArray[Any] | None = None,
    target_fraction: float = 0.7,
    member_fraction: float = 0.8,
    shadow_in_fraction: float = 0.5,
    max_members: int | None = None,
) -> Split:
    """Split rows 0..n-1 as in the paper.

    The test set is `test_indices` when the data set has its own (CIFAR-10 test batch,
    SST-2 dev set), else a seeded `test_fraction` of the rows. `max_members` keeps only
    that many members (the rest of the 80 % go unused), so that a small training set
    makes the target overfit; the non-members are unchanged. The evaluation set pairs
    every non-member with a distinct sampled member (if members are fewer, sampled
    non-members are dropped instead), so it is always balanced."""
    for name, value in [
        ("target_fraction", target_fraction),
        ("member_fraction", member_fraction),
        ("shadow_in_fraction", shadow_in_fraction),
    ]:
        _check_fraction(name, value)
    if max_members is not None and max_members < 1:
        raise ValueError(f"max_members must be >= 1, got {max_members}")
    rng = np.random.default_rng(seed)
    if test_indices is None:
        _check_fraction("test_fraction", test_fraction)
        test, pool = _cut(rng.permutation(n).astype(np.int64), test_fraction)
    else:
        test = _indices(test_indices)
        if len(test) and (test[0] < 0 or test[-1] >= n or len(np.unique(test)) != len(test)):
            raise ValueError("test_indices must be distinct row indices in [0, n)")
        pool = rng.permutation(np.setdiff1d(np.arange(n, dtype=np.int64), test))
    target, shadow = _cut(pool, target_fraction)
    members, nonmembers = _cut(target, member_fraction)
    shadow_in, shadow_out = _cut(shadow, shadow_in_fraction)
    if max_members is not None:
        members = members[:max_members]
    n_eval = min(len(members), len(nonmembers))
    if n_eval == 0:
        raise ValueError(f"n={n} is too small: no members or no non-members")
    eval_members = rng.choice(members, size=n_eval, replace=False)
    eval_nonmembers = rng.choice(nonmembers, size=n_eval, replace=False)
    return Split(
        seed=seed,
        target_members=_indices(members),
        target_nonmembers=_indices(nonmembers),
        shadow_in=_indices(shadow_in),
        shadow_out=_indices(shadow_out),
        test=_indices(test),
        eval_members=_indices(eval_members),
        eval_nonmembers=_indices(eval_nonmembers),
    )


def check_disjoint(split: Split, n: int) -> None:
    """Raise ValueError unless the five main parts are disjoint, in [0, n), and the
    evaluation sets are balanced subsets of members / non-members."""
    seen = np.concatenate([getattr(split, part) for part in SPLIT_PARTS[:5]])
    if len(seen) and (seen.min() < 0 or seen.max() >= n):
        raise ValueError(f"split indices out of range [0, {n})")
    if len(np.unique(seen)) != len(seen):
        raise ValueError("split parts overlap")
    if len(split.eval_members) != len(split.eval_nonmembers):
        raise ValueError("evaluation set is not balanced")
    if not (
        np.isin(split.eval_members, split.target_members).all()
        and np.isin(split.eval_nonmembers, split.target_nonmembers).all()
    ):
        raise ValueError("evaluation rows must come from the target's members / non-members")
