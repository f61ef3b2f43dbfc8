import numpy as np
import pytest
import torch

from tagger.data import loader
from tagger.data.dataset import ProductImages, ShardCache, order_by_shard
from tagger.data.transforms import BatchNormalize, create_transforms
from tagger.ingest.run import ingest_catalog
from tagger.lake import read_products
from tagger.io.storage import open_storage
from tests.conftest import DEMO_TAXONOMY


@pytest.fixture
def lake(catalog, tmp_path):
    from tagger.config import IngestConfig

    lake = tmp_path / "lake"
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), IngestConfig(shard_size=20))
    return lake


def _dataset(lake, train=False):
    products = read_products(open_storage(lake)).to_pylist()
    tf = create_transforms(40, train=train)
    return ProductImages(str(lake), [p["image_shard"] for p in products],
                         [p["image_hash"] for p in products], tf)


def test_eval_transform_fits_the_whole_product_and_pads_white():
    image = np.zeros((20, 80, 3), dtype=np.uint8)  # a wide black product
    tf = create_transforms(40, train=False)
    x = tf(image=image)["image"]
    assert x.shape == (40, 40, 3) and x.dtype == np.uint8
    # fitted to 40x10, padded with white above and below
    assert x[0, 0].tolist() == [255] * 3 and x[39, 39].tolist() == [255] * 3
    assert x[20, 0].tolist() == [0] * 3 and x[20, 39].tolist() == [0] * 3


def test_batch_normalize_matches_per_image_normalisation():
    """One batch op gives what albumentations' Normalize + ToTensorV2 gave per image."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = np.random.default_rng(0).integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    per_image = A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2()])
    want = torch.stack([per_image(image=im)["image"] for im in images])
    for reuse in (False, True):
        for channels_last in (False, True):
            got = BatchNormalize(mean, std, reuse=reuse)(torch.from_numpy(images),
                                                         channels_last=channels_last)
            assert got.dtype == torch.float32 and got.shape == (5, 3, 12, 10)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            assert got.is_contiguous(memory_format=fmt)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_batch_normalize_reuses_its_buffer_and_takes_smaller_batches():
    norm = BatchNormalize([0.5] * 3, [0.25] * 3, reuse=True)
    full = torch.full((4, 2, 2, 3), 255, dtype=torch.uint8)
    a = norm(full)
    assert torch.all(a == 2.0)  # (1 - 0.5) / 0.25
    b = norm(torch.zeros((3, 2, 2, 3), dtype=torch.uint8))  # the last, smaller batch
    assert b.shape == (3, 3, 2, 2) and torch.all(b == -2.0)
    assert b.data_ptr() == a.data_ptr()  # same memory: the caller is done with a batch first
    with pytest.raises(TypeError, match="uint8"):
        norm(torch.zeros((2, 3, 4, 4), dtype=torch.uint8))  # NCHW is not what the loader gives
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(norm(x), x)  # float batches are model input already


def test_dataset_items(lake):
    x, i = _dataset(lake)[3]
    assert x.shape == (40, 40, 3) and x.dtype == torch.uint8 and i == 3


def test_worker_processes_load_the_same_batches(lake, monkeypatch):
    """Workers (from a forkserver) see the lake through its URI and return identical data."""
    monkeypatch.setattr(loader, "MIN_BATCHES_FOR_WORKERS", 0)
    ds = _dataset(lake)
    plain = torch.cat([x for x, _ in loader.create_loader(ds, 16, 0)])
    workers = torch.cat([x for x, _ in loader.create_loader(ds, 16, 2)])
    assert torch.equal(plain, workers)


def _augmented(lake, workers: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # what a training run does first
    ds = _dataset(lake, train=True)
    return torch.cat([x for x, _ in loader.create_loader(ds, 8, workers, seed=seed)])


def test_augmentations_follow_the_run_seed(lake):
    """Two runs of one seed see the same augmented images (and so train the same model); another
    seed sees others. albumentations would draw them from OS entropy unless seeded."""
    first, again, other = _augmented(lake, 0, 1), _augmented(lake, 0, 1), _augmented(lake, 0, 2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_loader_workers_draw_different_augmentations(lake, monkeypatch):
    """Every worker unpickles the same transform: unless reseeded per worker, worker 1's n-th
    item gets worker 0's n-th augmentation. Over one image repeated, batches 0 and 1 (from
    workers 0 and 1) would then be equal pixel for pixel."""
    monkeypatch.setattr(loader, "MIN_BATCHES_FOR_WORKERS", 0)
    first = read_products(open_storage(lake)).to_pylist()[0]
    def same_image():
        return ProductImages(str(lake), [first["image_shard"]] * 16, [first["image_hash"]] * 16,
                             create_transforms(40, train=True))

    torch.manual_seed(1)
    batches = [x for x, _ in loader.create_loader(same_image(), 8, 2, seed=1)]
    assert not torch.equal(batches[0], batches[1])
    torch.manual_seed(1)
    assert all(torch.equal(a, b) for (a, _), b in zip(loader.create_loader(same_image(), 8, 2, seed=1), batches))


def test_small_jobs_skip_worker_start_up(lake):
    assert loader.create_loader(_dataset(lake), 16, 2).num_workers == 0


def test_shard_cache_evicts_oldest_shards(lake):
    products = read_products(open_storage(lake)).to_pylist()
    shards = sorted({p["image_shard"] for p in products})
    assert len(shards) == 3
    cache = ShardCache(str(lake), max_bytes=1)  # keeps only the newest shard
    for p in products:
        assert cache.get(p["image_shard"], p["image_hash"])[:2] == b"\xff\xd8"  # JPEG
    assert len(cache._shards) == 1
    by_count = ShardCache(str(lake), max_shards=2)  # the scorer's bound: shards, not bytes
    for p in products:
        by_count.get(p["image_shard"], p["image_hash"])
    assert list(by_count._shards) == shards[-2:] and by_count.reads == 3


def test_order_by_shard_groups_reads():
    order = order_by_shard(["b", "a", "b", "a"])
    assert order.tolist() == [1, 3, 0, 2]
