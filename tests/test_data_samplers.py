"""GroupedBatchSampler (aspect-ratio groups, sharding, determinism) and InferenceSampler."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pipeline.data.samplers import GroupedBatchSampler, InferenceSampler

RATIOS = [1.33, 0.75, 1.0, 0.67, 1.5, 1.2, 0.8, 1.0, 1.78, 0.5, 1.1, 0.9, 1.4]  # 8 wide/square, 5 tall


def _group(i: int) -> int:
    return int(RATIOS[i] >= 1.0)


def test_batches_hold_one_group_and_cover_every_index_once() -> None:
    s = GroupedBatchSampler(RATIOS, batch_size=3, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 3 + 2  # ceil(8/3) + ceil(5/3)
    for b in batches:
        assert len({_group(i) for i in b}) == 1
        assert 1 <= len(b) <= 3
    assert sorted(i for b in batches for i in b) == list(range(len(RATIOS)))


def test_same_seed_and_epoch_repeat_other_epochs_reshuffle() -> None:
    a = GroupedBatchSampler(RATIOS, batch_size=2, seed=11)
    b = GroupedBatchSampler(RATIOS, batch_size=2, seed=11)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    epochs = []
    for e in range(4):
        a.set_epoch(e)
        epochs.append(list(a))
    assert len({str(x) for x in epochs}) == 4
    assert list(GroupedBatchSampler(RATIOS, 2, seed=12)) != list(GroupedBatchSampler(RATIOS, 2, seed=11))


@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_ranks_get_equal_batch_counts_and_cover_everything(replicas: int) -> None:
    per_rank = []
    for rank in range(replicas):
        s = GroupedBatchSampler(RATIOS, batch_size=2, seed=5, num_replicas=replicas, rank=rank)
        s.set_epoch(1)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s)
    assert len({len(p) for p in per_rank}) == 1
    total_batches = 4 + 3  # ceil(8/2) + ceil(5/2)
    assert len(per_rank[0]) == -(-total_batches // replicas)
    seen = Counter(i for p in per_rank for b in p for i in b)
    assert set(seen) == set(range(len(RATIOS)))  # padding repeats batches, never drops an index
    for p in per_rank:
        for b in p:
            assert len({_group(i) for i in b}) == 1


def test_drop_last_keeps_full_batches_only() -> None:
    s = GroupedBatchSampler(RATIOS, batch_size=3, seed=0, drop_last=True, num_replicas=2, rank=1)
    assert len(s) == (2 + 1) // 2  # floor(8/3) + floor(5/3) = 3 batches over 2 ranks
    assert all(len(b) == 3 for b in s)


def test_without_shuffle_dataset_order() -> None:
    s = GroupedBatchSampler(RATIOS, batch_size=2, seed=0, shuffle=False)
    batches = list(s)
    firsts = [b[0] for b in batches]
    assert firsts == sorted(firsts)
    for b in batches:
        assert b == sorted(b)
    s.set_epoch(5)
    assert list(s) == batches


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        GroupedBatchSampler(RATIOS, batch_size=0)
    with pytest.raises(ValueError):
        GroupedBatchSampler(RATIOS, batch_size=2, num_replicas=2, rank=2)


@pytest.mark.parametrize("n,replicas", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_inference_sampler_contiguous_shards(n: int, replicas: int) -> None:
    shards = [list(InferenceSampler(n, replicas, r)) for r in range(replicas)]
    assert [i for s in shards for i in s] == list(range(n))  # contiguous, in rank order, each once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert all(len(InferenceSampler(n, replicas, r)) == sizes[r] for r in range(replicas))
    assert np.all(np.diff(sizes) <= 0)  # earlier ranks take the remainder
