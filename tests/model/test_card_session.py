"""ONNX exports found from the model card alone (tagger.model.runtime.card_session), and the
numpy scoring path (tagger.model.scoring) giving the model the torch loader's exact input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagger.config import TagConfig
from tagger.data.dataset import ProductImages
from tagger.data.transforms import BatchNormalize, create_transforms
from tagger.io.storage import open_storage
from tagger.lake import read_products
from tagger.model import runtime
from tagger.model.scoring import ImageScorer
from tagger.model.versions import load_model, read_card
from tests.conftest import FIXTURES

needs_onnx = pytest.mark.skipif(bool(runtime.missing_packages()), reason="onnxruntime not installed")


@pytest.fixture
def lake(tmp_path, onnx_cache):
    """A copy of the small committed lake (a trained test_efficientnet at 32 px)."""
    import shutil

    dst = tmp_path / "lake"
    shutil.copytree(FIXTURES / "lake_v0", dst)
    return dst


@needs_onnx
def test_a_cached_export_is_opened_without_loading_the_model(lake, onnx_cache):
    storage = open_storage(str(lake))
    card = read_card(storage)
    loads = []

    def load():
        loads.append(1)
        return load_model(storage, card.version)[0]

    shape = (3, card.image_size, card.image_size)
    assert runtime.cached_card_export(card, shape) is None
    first = runtime.card_session(card, shape, load)
    assert len(loads) == 1 and len(list(onnx_cache.glob("card-*.json"))) == 1
    runtime._open_session.cache_clear()  # as in a new process
    again = runtime.card_session(card, shape, load)
    assert len(loads) == 1 and again is not first  # the file, not the model
    assert runtime.cached_card_export(card, shape) is not None

    # another input size, other weights (their sha256) or a card without one: not this export
    assert runtime.cached_card_export(card, (3, 48, 48)) is None
    assert runtime.cached_card_export(card.model_copy(update={"weights_sha256": "0" * 64}), shape) is None
    assert runtime.card_key(card.model_copy(update={"weights_sha256": None}), shape) is None
    for f in onnx_cache.glob("*.onnx"):  # pruned: the pointer leads nowhere, the model is loaded
        f.unlink()
    runtime._open_session.cache_clear()
    runtime.card_session(card, shape, load)
    assert len(loads) == 2


@needs_onnx
def test_numpy_path_feeds_the_model_the_torch_loaders_input(lake):
    """The ONNX path's batches (decode, fit_square, numpy normalisation) are bit for bit the
    torch path's (ProductImages, create_transforms, BatchNormalize), and so are its logits."""
    storage = open_storage(str(lake))
    card = read_card(storage)
    products = read_products(storage).to_pylist()
    shards, hashes = [p["image_shard"] for p in products], [p["image_hash"] for p in products]
    config = TagConfig(runtime="onnx", workers=2, batch_size=16)
    scorer = ImageScorer.of_version(storage, card.version, config)

    images = ProductImages(str(lake), shards, hashes, create_transforms(card.image_size, train=False))
    normalize = BatchNormalize.from_config(card.data_config)
    start = 0
    for at, batch, from_memory in scorer._batches(str(lake), shards, hashes, None):
        assert at == start and from_memory == 0
        expected = torch.stack([images[i][0] for i in range(at, at + len(batch))])
        np.testing.assert_array_equal(batch, expected.numpy())
        np.testing.assert_array_equal(scorer._normalise(batch), normalize(expected).numpy())
        start += len(batch)
    assert start == len(products)

    torch_scores = ImageScorer.of_version(storage, card.version, config.model_copy(
        update={"runtime": "torch", "precision": "fp32", "workers": 0})).score(
        str(lake), shards, hashes, desc="torch")
    onnx_scores = scorer.score(str(lake), shards, hashes, desc="onnx")
    assert np.abs(onnx_scores.logits - torch_scores.logits).max() < 1e-4

    # images in memory are used instead of their shards: here, the same decoded inputs
    held = {h: images[i][0].numpy() for i, h in enumerate(hashes[:5])}
    with_held = scorer.score(str(lake), shards, hashes, desc="held", images=held)
    np.testing.assert_array_equal(with_held.logits, onnx_scores.logits)
    assert [m for *_, m in scorer._batches(str(lake), shards, hashes, held)][0] == 5
