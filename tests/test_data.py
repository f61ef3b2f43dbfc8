import numpy as np
import pytest
import torch

from tagger import predict
from tagger.data import ProductImages, ShardCache, create_transforms, order_by_shard
from tagger.ingest import ingest_catalog, read_products
from tagger.storage import open_storage
from tests.conftest import DEMO_TAXONOMY


@pytest.fixture
def lake(catalog, tmp_path):
    from tagger.config import IngestConfig

    lake = tmp_path / "lake"
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), IngestConfig(shard_size=20))
    return lake


def _dataset(lake, train=False):
    products = read_products(open_storage(lake)).to_pylist()
    tf = create_transforms(40, [0.5] * 3, [0.25] * 3, train=train)
    return ProductImages(str(lake), [p["image_shard"] for p in products],
                         [p["image_hash"] for p in products], tf)


def test_eval_transform_fits_the_whole_product_and_pads_white():
    image = np.zeros((20, 80, 3), dtype=np.uint8)  # a wide black product
    tf = create_transforms(40, [0.5] * 3, [0.25] * 3, train=False)
    x = tf(image=image)["image"]
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32
    # fitted to 40x10, padded with white: (1 - 0.5) / 0.25 = 2; black: (0 - 0.5) / 0.25 = -2
    assert x[:, 0, 0].tolist() == pytest.approx([2.0] * 3, abs=0.02)
    assert x[:, 20, 0].tolist() == pytest.approx([-2.0] * 3, abs=0.02)
    assert x[:, 20, 39].tolist() == pytest.approx([-2.0] * 3, abs=0.02)


def test_dataset_items(lake):
    x, i = _dataset(lake)[3]
    assert x.shape == (3, 40, 40) and i == 3


def test_worker_processes_load_the_same_batches(lake, monkeypatch):
    """Workers (from a forkserver) see the lake through its URI and return identical data."""
    monkeypatch.setattr(predict, "MIN_BATCHES_FOR_WORKERS", 0)
    ds = _dataset(lake)
    plain = torch.cat([x for x, _ in predict.create_loader(ds, 16, 0)])
    workers = torch.cat([x for x, _ in predict.create_loader(ds, 16, 2)])
    assert torch.equal(plain, workers)


def test_small_jobs_skip_worker_start_up(lake):
    assert predict.create_loader(_dataset(lake), 16, 2).num_workers == 0


def test_shard_cache_evicts_oldest_shards(lake):
    products = read_products(open_storage(lake)).to_pylist()
    shards = sorted({p["image_shard"] for p in products})
    assert len(shards) == 3
    cache = ShardCache(str(lake), max_bytes=1)  # keeps only the newest shard
    for p in products:
        assert cache.get(p["image_shard"], p["image_hash"])[:2] == b"\xff\xd8"  # JPEG
    assert len(cache._shards) == 1


def test_order_by_shard_groups_reads():
    order = order_by_shard(["b", "a", "b", "a"])
    assert order.tolist() == [1, 3, 0, 2]
