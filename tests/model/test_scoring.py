"""One scoring pipeline (tagger.model.scoring): a tag run and an evaluation get the same
scores for the same images, chunked or not, and they are the card-calibrated outputs of the
model itself."""

import numpy as np
import pytest
import torch

from tagger.config import TagConfig
from tagger.data.dataset import ProductImages
from tagger.data.loader import create_loader
from tagger.data.transforms import BatchNormalize, create_transforms
from tagger.io.storage import open_storage
from tagger.lake import read_products
from tagger.model.predict import predict_scores
from tagger.model.scoring import ImageScorer, card_arrays, score_images
from tagger.model.versions import load_model
from tagger.quality.calibration import apply_temperature
from tagger.tag.run import score_products

CONFIG = TagConfig(runtime="torch", precision="fp32", workers=0, device="cpu", batch_size=16)


@pytest.mark.slow
def test_tag_runs_and_evaluations_score_images_alike(trained_lake):
    lake, version = trained_lake
    model, card = load_model(open_storage(lake), version)
    products = read_products(open_storage(lake)).to_pylist()
    shards, hashes = [p["image_shard"] for p in products], [p["image_hash"] for p in products]

    # By hand: the chain the pipeline stands for.
    texts = [p["text"] for p in products]
    images = ProductImages(str(lake), shards, hashes, create_transforms(card.data_config.image_size, train=False),
                           texts=texts, text_config=card.text)
    logits = predict_scores(model, create_loader(images, 16, 0), torch.device("cpu"), precision="fp32",
                            logits=True, normalize=BatchNormalize.from_config(card.data_config))
    arrays = card_arrays(card)
    assert np.any(arrays.temperature != 1.0)  # a calibrated card: the scores are not plain sigmoids
    expected = apply_temperature(logits, arrays.temperature, arrays.softmax_slices)

    whole = score_images(model, card, str(lake), shards, hashes, CONFIG, desc="whole", texts=texts)
    np.testing.assert_array_equal(whole.logits, logits)
    np.testing.assert_array_equal(whole.scores, expected)

    # In chunks through one scorer (its normalisation buffer reused across chunks); the cut
    # is on a batch boundary, so every forward pass sees the same images.
    scorer = ImageScorer(model, card, CONFIG)
    parts = [scorer.score(str(lake), shards[a:b], hashes[a:b], desc="chunk", texts=texts[a:b])
             for a, b in ((0, 32), (32, len(products)))]
    np.testing.assert_array_equal(np.concatenate([p.scores for p in parts]), expected)

    # A tag run's model rows carry exactly these scores.
    rows = score_products(str(lake), version, [p["product_id"] for p in products], CONFIG)
    at = {p["product_id"]: i for i, p in enumerate(products)}
    out = {o: k for k, o in enumerate(card.taxonomy.outputs)}
    model_rows = [(pid, a, v, s) for pid, a, v, s in
                  zip(rows["product_id"], rows["attribute"], rows["value"], rows["score"]) if s is not None]
    assert model_rows
    assert all(s == float(expected[at[pid], out[(a, v)]]) for pid, a, v, s in model_rows)
