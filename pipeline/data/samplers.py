"""Batch samplers: aspect-ratio grouped training batches and contiguous inference shards.

:class:`GroupedBatchSampler` follows mmdetection's ``GroupSampler`` /
``DistributedGroupSampler``: images with ``w / h >= 1`` and ``< 1`` form two groups, each
batch holds images of one group only (so padding to the batch's largest image wastes
little), and every rank of a distributed run gets the same number of batches.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch


class GroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of dataset indices grouped by aspect ratio, reshuffled every epoch.

    Per epoch (``rng = np.random.default_rng([seed, epoch])``): indices of each group are
    shuffled and cut into batches of ``batch_size`` (the last one of a group smaller, or
    dropped with ``drop_last``); the batches of both groups are then shuffled together.
    The batch list is padded by repeating its first batches to a multiple of
    ``num_replicas`` (or truncated with ``drop_last``) and rank ``r`` takes batches
    ``r, r + R, r + 2R, ...``. Without ``shuffle`` the order is the dataset order.

    Args:
        aspect_ratios: width / height of every image, in dataset order.
        batch_size: images per batch on one rank.
        seed: base seed of the shuffles (same on every rank).
        shuffle: reshuffle each epoch.
        num_replicas, rank: the distributed world size and this process's rank.
        drop_last: drop incomplete batches and the batches that do not fill all ranks.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[float],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        ratios = np.asarray(aspect_ratios, np.float64)
        self.group_ids = (ratios >= 1.0).astype(np.int64)  # 1: landscape or square, 0: portrait
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle the next iteration uses."""
        self.epoch = int(epoch)

    def _num_batches_total(self) -> int:
        """Batches over all ranks before padding/truncation to a multiple of ``num_replicas``."""
        sizes = np.bincount(self.group_ids, minlength=2)
        if self.drop_last:
            return int(sum(s // self.batch_size for s in sizes))
        return int(sum(math.ceil(s / self.batch_size) for s in sizes))

    def __len__(self) -> int:
        """Batches per rank per epoch."""
        total = self._num_batches_total()
        if self.drop_last:
            return total // self.num_replicas
        return math.ceil(total / self.num_replicas)

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch over all ranks (after padding), in order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        batches: list[list[int]] = []
        for group in (0, 1):
            idx = np.flatnonzero(self.group_ids == group)
            if self.shuffle:
                idx = rng.permutation(idx)
            for start in range(0, len(idx), self.batch_size):
                batch = idx[start : start + self.batch_size].tolist()
                if len(batch) < self.batch_size and self.drop_last:
                    continue
                batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        else:
            batches.sort(key=lambda b: b[0])
        per_rank = len(self)
        wanted = per_rank * self.num_replicas
        if len(batches) < wanted:
            batches = [batches[i % len(batches)] for i in range(wanted)] if batches else []
        return batches[:wanted]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.rank :: self.num_replicas]


class InferenceSampler(torch.utils.data.Sampler[int]):
    """Contiguous shard of ``range(n)`` for rank ``rank`` of ``num_replicas``: every index
    exactly once over all ranks, shard sizes differing by at most one, no padding."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        base, extra = divmod(n, num_replicas)
        self.begin = rank * base + min(rank, extra)
        self.end = self.begin + base + (1 if rank < extra else 0)

    def __len__(self) -> int:
        return self.end - self.begin

    def __iter__(self) -> Iterator[int]:
        yield from range(self.begin, self.end)
