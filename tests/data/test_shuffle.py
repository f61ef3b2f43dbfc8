"""Shard-aware shuffling: each shard read about once per epoch from a lake larger than the
loader's cache, every product once per epoch, reproducible per (seed, epoch), disjoint
shards per rank and per loader worker, and the same global batches for any world size."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

from catalog_schemas.tables import IMAGES
from tagger.data import loader
from tagger.data.dataset import ProductImages
from tagger.data.shuffle import ShardBatchSampler, default_partitions, plan_streams, split_quota
from tagger.data.transforms import create_transforms
from tagger.io.storage import open_storage, write_table
from tagger.lake import image_shard_path


def _shards(n_shards: int, per_shard: int) -> list[str]:
    """Shard name per product, products listed shard by shard (as ingest writes them)."""
    return [f"s{s:03d}" for s in range(n_shards) for _ in range(per_shard)]


def _epoch(sampler: ShardBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_split_quota_and_default_partitions():
    assert split_quota(10, 4) == [3, 3, 2, 2] and split_quota(8, 8) == [1] * 8
    assert [default_partitions(n, w) for n, w in [(1, 0), (2, 0), (2, 4), (3, 4), (16, 1)]] == [8, 8, 8, 24, 16]


def test_streams_are_shard_runs_shuffled_within_windows():
    shards = _shards(12, 5)
    streams = plan_streams(shards, seed=0, epoch=0, partitions=2, window=2)
    assert sorted(np.concatenate(streams).tolist()) == list(range(60)) and [len(s) for s in streams] == [30, 30]
    for stream in streams:  # 6 shards per stream, 3 windows of 2 whole shards each
        for w in range(3):
            window = {shards[i] for i in stream[10 * w:10 * (w + 1)]}
            assert len(window) == 2
    assert [np.array_equal(a, b) for a, b in zip(streams, plan_streams(shards, 0, 0, 2, 2))] == [True, True]
    assert not np.array_equal(np.concatenate(streams), np.concatenate(plan_streams(shards, 0, 1, 2, 2)))
    assert not np.array_equal(np.concatenate(streams), np.concatenate(plan_streams(shards, 1, 0, 2, 2)))


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (2, 2), (4, 2)])
def test_every_product_once_per_epoch_and_ranks_on_disjoint_shards(world, workers):
    shards = _shards(40, 8)  # 320 products: 8 streams x 40, batches of 4 per rank fit exactly
    samplers = [ShardBatchSampler(shards, 4, seed=3, world_size=world, rank=r, workers=workers)
                for r in range(world)]
    seen = {r: [i for b in _epoch(s, 5) for i in b] for r, s in enumerate(samplers)}
    everything = sorted(i for ids in seen.values() for i in ids)
    assert everything == list(range(320))  # once each, nothing dropped
    assert len({len(s) for s in samplers}) == 1 == len({len(_epoch(s, 5)) for s in samplers})
    assert len(samplers[0]) == len(_epoch(samplers[0], 5))
    per_rank = [{shards[i] for i in ids} for ids in seen.values()]
    shared = sum(len(a & b) for k, a in enumerate(per_rank) for b in per_rank[k + 1:])
    assert shared <= samplers[0].partitions - 1  # only the shards the stream cuts split


def test_loader_workers_get_batches_of_their_own_shards():
    shards = _shards(40, 8)
    sampler = ShardBatchSampler(shards, 4, seed=0, workers=2)  # 8 streams, 4 per worker
    batches = _epoch(sampler, 0)
    by_worker = [{shards[i] for b in batches[w::2] for i in b} for w in range(2)]
    assert len(by_worker[0] & by_worker[1]) <= sampler.partitions - 1
    assert len(by_worker[0] | by_worker[1]) == 40


def test_epochs_reproduce_from_seed_and_epoch_alone():
    """A run resumed at epoch 2 draws what the uninterrupted run drew in its third epoch."""
    shards = _shards(20, 7)
    running = ShardBatchSampler(shards, 6, seed=11, world_size=2, rank=1)
    epochs = [_epoch(running, e) for e in range(3)]
    resumed = ShardBatchSampler(shards, 6, seed=11, world_size=2, rank=1)
    assert _epoch(resumed, 2) == epochs[2] != epochs[1]
    assert _epoch(ShardBatchSampler(shards, 6, seed=12, world_size=2, rank=1), 2) != epochs[2]


def test_global_batches_do_not_depend_on_the_world_size():
    """1 process x batch 16 and 2 processes x batch 8 (and 4 x 4) step through the same
    global batches: what tests/train/test_ddp.py compares the trained weights of."""
    shards = _shards(9, 13)  # 117 products: some dropped at the end of the epoch
    one = _epoch(ShardBatchSampler(shards, 16, seed=0), 1)
    for world in (2, 4):
        ranks = [_epoch(ShardBatchSampler(shards, 16 // world, seed=0, world_size=world, rank=r), 1)
                 for r in range(world)]
        assert all(len(r) == len(one) for r in ranks)
        assert [[i for r in ranks for i in r[s]] for s in range(len(one))] == one
    seen = [i for b in one for i in b]
    assert len(set(seen)) == len(seen) and 117 - len(seen) < 16  # less than a batch dropped


def test_small_batches_and_bad_partitions():
    sampler = ShardBatchSampler(_shards(3, 4), 2, seed=0)  # batch 2: 2 streams, not 8
    assert sampler.partitions == 2 and sorted(i for b in _epoch(sampler, 0) for i in b) == list(range(12))
    with pytest.raises(ValueError, match="multiple of 4"):
        ShardBatchSampler(_shards(3, 4), 8, world_size=2, workers=2, partitions=6)
    tail = ShardBatchSampler(_shards(1, 5), 8, drop_last=False)  # fewer products than a batch
    assert sorted(i for b in _epoch(tail, 0) for i in b) == list(range(5)) and len(tail) == 1


def _jpeg(rng: np.random.Generator) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _synthetic_lake(path, n_shards: int, per_shard: int) -> tuple[list[str], list[str], int]:
    """Image shards only (what the loader reads): per product its shard and hash, and the
    shards' image bytes in all."""
    storage, rng, total = open_storage(path), np.random.default_rng(0), 0
    shards, hashes = [], []
    for s in range(n_shards):
        data = [_jpeg(rng) for _ in range(per_shard)]
        names = [f"h{s:03d}-{k:03d}" for k in range(per_shard)]
        write_table(storage, image_shard_path(f"s{s:03d}.parquet"), pa.table(
            [names, [16] * per_shard, [16] * per_shard, data], schema=IMAGES))
        shards += [f"s{s:03d}.parquet"] * per_shard
        hashes += names
        total += sum(map(len, data))
    return shards, hashes, total


def test_each_shard_is_read_about_once_per_epoch_from_a_lake_beyond_the_cache(tmp_path):
    """60 shards, a loader cache of 7 (a stream window of 2 shards + the next, for 2 streams):
    the shard-aware order reads each shard ~once per epoch; random order re-reads most."""
    shards, hashes, total = _synthetic_lake(tmp_path / "lake", 60, 12)
    per_shard = total / 60

    def bytes_read(batch_sampler=None, sampler=None) -> float:
        ds = ProductImages(str(tmp_path / "lake"), shards, hashes, create_transforms(16, train=False))
        ds.cache.max_bytes = int(7 * per_shard)
        seen = []
        for epoch in range(2):
            (batch_sampler if batch_sampler is not None else sampler).set_epoch(epoch)
            dl = loader.create_loader(ds, 8, 0, batch_sampler=batch_sampler, sampler=sampler)
            seen += [len(x) for x, _ in dl]
        assert sum(seen) == 2 * len(shards)  # every product in both epochs
        return ds.cache.bytes_read / (2 * total)

    ours = bytes_read(ShardBatchSampler(shards, 8, seed=0, partitions=2, window=2))
    old = bytes_read(sampler=DistributedSampler(list(range(len(shards))), num_replicas=1, rank=0, seed=0))
    print(f"bytes read per epoch / shard bytes: shard-aware {ours:.3f}, random {old:.3f}")
    assert ours <= 1.1
    assert old > 3  # the control: random order over shards 8x the cache re-reads them


class _WhoLoads(Dataset):
    """(index, loader worker id) per item: which worker loaded which product."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([i, torch.utils.data.get_worker_info().id])


def test_a_real_loader_hands_each_worker_the_batches_of_its_shards(monkeypatch):
    """The DataLoader gives batch s to worker s mod W (what the sampler's layout relies on),
    also in the second epoch of persistent workers."""
    monkeypatch.setattr(loader, "MIN_BATCHES_FOR_WORKERS", 0)
    shards = _shards(16, 6)
    sampler = ShardBatchSampler(shards, 4, seed=0, workers=2)
    dl = loader.create_loader(_WhoLoads(len(shards)), 4, 2, batch_sampler=sampler, persistent=True)
    assert dl.num_workers == 2
    for epoch in range(2):
        sampler.set_epoch(epoch)
        got = list(dl)
        assert [b[:, 1].unique().tolist() for b in got] == [[s % 2] for s in range(len(got))]
        assert [b[:, 0].tolist() for b in got] == _epoch(sampler, epoch)
