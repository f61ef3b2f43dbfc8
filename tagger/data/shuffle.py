"""Shard-aware shuffling of the training split: each image shard is read about once per epoch.

Random order over a lake whose shards are larger than a loader's cache (ShardCache) reads a
whole shard for nearly every image. This batch sampler orders an epoch so that reads stay
sequential, yet every batch mixes several shards:

1. the shards are shuffled (per seed and epoch) and their products laid out in that order;
2. the sequence is cut into `partitions` equal parts (streams);
3. within each stream, products are shuffled inside windows of `window` consecutive shards
   (a shuffle buffer that never reaches back to a shard it has left);
4. a step's global batch takes the same number of products from each stream; rank r of N
   owns streams [r*P/N, (r+1)*P/N), and its loader worker w of W the streams k = w mod W of
   those (the DataLoader hands batch s to worker s mod W, so batch s draws only from worker
   s mod W's streams).

So ranks and workers read disjoint shards (but for the up to P-1 shards a cut splits), and a
worker holds (P/(N*W)) * (window + 1) shards at a time. The plan is a pure function of
(seed, epoch, streams, batch), not of the world size: N processes with batch b draw exactly
the global batches one process draws with batch N*b (workers 0 or 1, P dividing the global
batch), which tests/train/test_ddp.py relies on, and a run resumed at an epoch boundary
continues with the epochs it would have had. With several workers a batch draws from one
worker's streams, so the worker count changes which products share a batch (not what an
epoch contains).

Why not a library: WebDataset and MosaicML streaming read their own shard formats (tar,
MDS), not the lake's Parquet shards, and Hugging Face datasets' iterable shuffling splits
whole files by node, with unequal step counts per rank (DDP would wait forever) and no
world-size-independent order; the training split is also a subset of each shard, with its
labels in the products table, not in the shards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

# Streams of a single process: a batch draws from all of them. 8 so that 1, 2, 4 and 8
# processes share one plan (default_partitions), and so that a batch mixes >= 8 windows.
BASE_PARTITIONS = 8


def default_partitions(world_size: int, workers: int) -> int:
    """The smallest stream count every rank and loader worker can share evenly, and a
    multiple of BASE_PARTITIONS (the same plan for 1, 2, 4 and 8 processes)."""
    return math.lcm(BASE_PARTITIONS, world_size * max(workers, 1))


def plan_streams(shards: Sequence[str], seed: int, epoch: int, partitions: int,
                 window: int) -> list[np.ndarray]:
    """The epoch's streams: product indices, shard order shuffled, cut into `partitions`
    parts of equal length (+-1), shuffled within windows of `window` shards."""
    rng = np.random.default_rng([seed, epoch])
    names, codes = np.unique(np.asarray(shards, dtype=object), return_inverse=True)
    place = np.empty(len(names), dtype=np.int64)
    place[rng.permutation(len(names))] = np.arange(len(names))
    sequence = np.argsort(place[codes], kind="stable")  # products grouped by shuffled shard
    streams = []
    for part in np.array_split(sequence, partitions):
        shard_of = codes[part]
        starts = np.r_[True, shard_of[1:] != shard_of[:-1]] if len(part) else np.array([], bool)
        window_of = (np.cumsum(starts) - 1) // window
        streams.append(part[np.lexsort((rng.random(len(part)), window_of))])
    return streams


def split_quota(batch: int, parts: int) -> list[int]:
    """`batch` items over `parts` streams: as even as possible, the first ones one more."""
    return [batch // parts + (k < batch % parts) for k in range(parts)]


class ShardBatchSampler(Sampler[list[int]]):
    """Batches of this rank's product indices in shard-aware order (module docstring); a
    DataLoader `batch_sampler`. `set_epoch` before each epoch, as DistributedSampler."""

    def __init__(self, shards: Sequence[str], batch_size: int, *, seed: int = 0,
                 world_size: int = 1, rank: int = 0, workers: int = 0, window: int = 2,
                 partitions: int | None = None, drop_last: bool = True):
        if window < 1 or batch_size < 1:
            raise ValueError(f"window ({window}) and batch_size ({batch_size}) must be >= 1")
        groups = world_size * max(workers, 1)
        if partitions is None:  # a batch smaller than BASE_PARTITIONS: one product per stream
            partitions = default_partitions(world_size, workers)
            partitions = groups * min(partitions // groups, batch_size)
        if partitions % groups or partitions // groups > batch_size:
            raise ValueError(f"{partitions} shuffle partitions cannot be shared by {world_size} "
                             f"processes x {max(workers, 1)} loader workers with batch {batch_size}: "
                             f"use a multiple of {groups} of at most {groups * batch_size}")
        self.shards, self.batch_size, self.seed = list(shards), batch_size, seed
        self.world_size, self.rank, self.workers = world_size, rank, max(workers, 1)
        self.partitions, self.window, self.drop_last, self.epoch = partitions, window, drop_last, 0
        self.per_worker = partitions // groups
        self.quota = split_quota(batch_size, self.per_worker)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _owned(self, rank: int, worker: int) -> list[int]:
        """The streams loader worker `worker` of `rank` draws from, in quota order."""
        first = rank * self.partitions // self.world_size
        return [first + worker + k * self.workers for k in range(self.per_worker)]

    def _steps(self, lengths: list[int]) -> int:
        """Batches per worker, the same on every rank and worker (DDP steps in lockstep): as
        many as the shortest stream fills (drop_last), or as the longest one needs."""
        per_rank = self.partitions // self.world_size
        fits = [(n // q if self.drop_last else -(-n // q))
                for p, n in enumerate(lengths) for q in [self.quota[(p % per_rank) // self.workers]]]
        return (min if self.drop_last else max)(fits) if fits else 0

    def _batches(self, lengths: list[int]) -> Iterator[list[tuple[int, int, int]]]:
        """Per batch of this rank, in order: (stream, start, stop) of each stream's part."""
        for t in range(self._steps(lengths)):
            for w in range(self.workers):  # the DataLoader hands batch t*W + w to worker w
                parts = [(p, min(t * q, lengths[p]), min((t + 1) * q, lengths[p]))
                         for p, q in zip(self._owned(self.rank, w), self.quota)]
                if any(b > a for _, a, b in parts):
                    yield parts

    def __len__(self) -> int:
        n, parts = len(self.shards), self.partitions
        return sum(1 for _ in self._batches([n // parts + (p < n % parts) for p in range(parts)]))

    def __iter__(self) -> Iterator[list[int]]:
        streams = plan_streams(self.shards, self.seed, self.epoch, self.partitions, self.window)
        for parts in self._batches([len(s) for s in streams]):
            yield [int(i) for p, a, b in parts for i in streams[p][a:b]]
