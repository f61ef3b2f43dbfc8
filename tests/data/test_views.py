"""A product's several images: flattened for scoring, pooled back per product, and sampled
one per visit in training."""

import numpy as np
import pytest
import torch

from tagger.data.dataset import ProductImages
from tagger.data.views import Views


def _ref(shard: str, image_hash: str) -> dict:
    return {"image_uri": f"{image_hash}.jpg", "image_version": None, "image_hash": image_hash,
            "image_shard": shard}


MORE = [None, [_ref("s2", "b2"), _ref("s1", "b3")], []]


def test_views_list_every_image_product_by_product():
    views = Views.of(["s1", "s1", "s3"], ["a", "b", "c"], MORE)
    assert views.hashes == ["a", "b", "b2", "b3", "c"]
    assert views.shards == ["s1", "s1", "s2", "s1", "s3"]
    assert views.owners.tolist() == [0, 1, 1, 1, 2] and views.products == 3 and views.several
    assert views.spread(["t0", "t1", "t2"]) == ["t0", "t1", "t1", "t1", "t2"]
    assert views.spread(np.array([10, 11, 12])).tolist() == [10, 11, 11, 11, 12]


def test_pooling_is_the_mean_or_maximum_of_a_products_images():
    views = Views.of(["s1", "s1", "s3"], ["a", "b", "c"], MORE)
    logits = np.array([[1.0, -1.0], [0.0, 3.0], [2.0, 0.0], [4.0, -3.0], [5.0, 5.0]], np.float32)
    np.testing.assert_allclose(views.pool(logits, "mean"), [[1, -1], [2, 0], [5, 5]])
    np.testing.assert_allclose(views.pool(logits, "max"), [[1, -1], [4, 3], [5, 5]])
    np.testing.assert_allclose(views.pool(logits, "first"), [[1, -1], [0, 3], [5, 5]])
    with pytest.raises(ValueError, match="4 logits for 5 views"):
        views.pool(logits[:4])
    with pytest.raises(ValueError, match="unknown image pooling 'median'"):
        views.pool(logits, "median")


def test_products_with_one_image_each_are_their_images():
    views = Views.of(["s1", "s2"], ["a", "b"], [None, []])
    assert not views.several and views.hashes == ["a", "b"]
    logits = np.arange(4, dtype=np.float32).reshape(2, 2)
    assert views.pool(logits, "max") is logits


class _Cache:
    """Image bytes by hash, counting which were read."""

    def __init__(self):
        self.seen: list[str] = []

    def get(self, shard: str, image_hash: str) -> bytes:
        self.seen.append(image_hash)
        from io import BytesIO

        from PIL import Image

        buf = BytesIO()
        Image.new("RGB", (8, 8), (len(self.seen) % 255, 0, 0)).save(buf, format="PNG")
        return buf.getvalue()


def _dataset(views: str) -> ProductImages:
    targets = np.eye(3, dtype=np.float32)
    ds = ProductImages("unused", ["s1", "s1", "s3"], ["a", "b", "c"], lambda image: {"image": image},
                       targets, np.ones_like(targets, bool), more=MORE, views=views)
    ds.cache = _Cache()
    return ds


def test_training_draws_one_of_a_products_images_per_visit():
    ds = _dataset("sample")
    assert len(ds) == 3
    torch.manual_seed(0)
    for _ in range(60):
        _, target, _ = ds[1]
        assert target.argmax().item() == 1
    assert set(ds.cache.seen) == {"b", "b2", "b3"}  # each of product 1's images came up
    ds.cache.seen.clear()
    ds[0], ds[2]
    assert ds.cache.seen == ["a", "c"]


def test_scoring_gives_every_image_with_its_products_targets():
    ds = _dataset("all")
    assert len(ds) == 5
    owners = [ds[i][1].argmax().item() for i in range(len(ds))]
    assert owners == [0, 1, 1, 1, 2] and ds.cache.seen == ["a", "b", "b2", "b3", "c"]
    assert ds.pool(np.zeros((5, 3), np.float32)).shape == (3, 3)
