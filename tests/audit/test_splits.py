from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.audit.splits import SPLIT_PARTS, Split, check_disjoint, paper_split


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=20, max_value=3000),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    max_members=st.one_of(st.none(), st.integers(min_value=1, max_value=500)),
)
def test_parts_are_disjoint_in_range_and_cover_the_used_rows(
    n: int, seed: int, max_members: int | None
) -> None:
    split = paper_split(n, seed=seed, max_members=max_members)
    check_disjoint(split, n)
    used = sum(len(getattr(split, p)) for p in SPLIT_PARTS[:5])
    if max_members is None:
        assert used == n
    else:
        assert len(split.target_members) <= max_members
    assert len(split.eval_members) == len(split.eval_nonmembers) > 0


def test_proportions_follow_the_paper() -> None:
    split = paper_split(10_000, seed=3)
    # 20 % test; pool 8,000 -> 70 % target (5,600) -> 80/20; 30 % shadow (2,400) -> 50/50.
    assert len(split.test) == 2000
    assert len(split.target_members) == 4480 and len(split.target_nonmembers) == 1120
    assert len(split.shadow_in) == 1200 and len(split.shadow_out) == 1200
    assert len(split.eval_nonmembers) == 1120
    np.testing.assert_array_equal(split.eval_nonmembers, split.target_nonmembers)


def test_same_seed_gives_the_same_split_and_hash() -> None:
    first, second = paper_split(997, seed=11), paper_split(997, seed=11)
    for part in SPLIT_PARTS:
        np.testing.assert_array_equal(getattr(first, part), getattr(second, part))
    assert first.split_hash == second.split_hash
    assert len(first.split_hash) == 16 and int(first.split_hash, 16) >= 0


def test_another_seed_gives_another_split() -> None:
    first, second = paper_split(997, seed=11), paper_split(997, seed=12)
    assert first.split_hash != second.split_hash
    assert not np.array_equal(first.target_members, second.target_members)


def test_hash_changes_when_one_index_moves() -> None:
    split = paper_split(500, seed=0)
    moved = split.target_members.copy()
    moved[0] = split.target_nonmembers[0]
    assert replace(split, target_members=moved).split_hash != split.split_hash


def test_given_test_indices_become_the_test_set_and_nothing_else() -> None:
    test = np.arange(900, 1000)
    split = paper_split(1000, seed=0, test_indices=test)
    np.testing.assert_array_equal(split.test, test)
    check_disjoint(split, 1000)
    others = np.concatenate(
        [split.target_members, split.target_nonmembers, split.shadow_in, split.shadow_out]
    )
    assert others.max() < 900 and len(others) == 900


def test_max_members_caps_members_and_keeps_non_members() -> None:
    full = paper_split(5000, seed=0)
    capped = paper_split(5000, seed=0, max_members=1000)
    assert len(capped.target_members) == 1000
    assert np.isin(capped.target_members, full.target_members).all()
    np.testing.assert_array_equal(capped.target_nonmembers, full.target_nonmembers)
    np.testing.assert_array_equal(capped.shadow_in, full.shadow_in)


def test_evaluation_set_stays_balanced_when_members_are_fewer_than_non_members() -> None:
    split = paper_split(5000, seed=0, max_members=100)
    np.testing.assert_array_equal(split.eval_members, split.target_members)
    assert len(split.eval_nonmembers) == 100
    assert np.isin(split.eval_nonmembers, split.target_nonmembers).all()


def test_manifest_round_trip_keeps_arrays_and_checks_the_hash() -> None:
    split = paper_split(300, seed=5, max_members=50)
    record = split.to_manifest()
    assert {"seed", "hash", "members", "non_members", "test", "shadow_in", "shadow_out"} <= set(
        record
    )
    again = Split.from_manifest(record)
    assert again.split_hash == split.split_hash
    np.testing.assert_array_equal(again.eval_members, split.eval_members)
    with pytest.raises(ValueError, match="hash"):
        Split.from_manifest({**record, "members": record["members"][1:]})


def test_check_disjoint_rejects_overlap_and_out_of_range() -> None:
    split = paper_split(200, seed=0)
    overlapping = replace(split, test=np.r_[split.test, split.target_members[:1]])
    with pytest.raises(ValueError, match="overlap"):
        check_disjoint(overlapping, 200)
    with pytest.raises(ValueError, match="range"):
        check_disjoint(split, 150)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"test_fraction": 0.0},
        {"target_fraction": 1.0},
        {"member_fraction": -0.1},
        {"shadow_in_fraction": 1.5},
        {"max_members": 0},
        {"test_indices": [0, 0, 1]},
        {"test_indices": [99, 100]},
    ],
)
def test_invalid_options_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        paper_split(100, seed=0, **kwargs)  # type: ignore[arg-type]
