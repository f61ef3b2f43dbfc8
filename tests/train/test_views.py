"""Several images per product, end to end: trained on one view per visit, scored on every
view and pooled as the card says; the pooled score beats either view alone."""

from __future__ import annotations

import shutil

import pytest

from catalog_schemas.card import CARD_FORMAT
from tagger.config import TagConfig
from tagger.demo.sample import generate_catalog
from tagger.ingest.run import ingest_catalog
from tagger.io.storage import open_storage
from tagger.lake import read_latest
from tagger.model.scoring import ImageScorer
from tagger.model.versions import read_card
from tagger.quality.calibration import apply_temperature
from tagger.review.issues import held_out_rows
from tagger.tag.run import tag_catalog
from tagger.train.epochs import mean_ap, ranked
from tagger.train.run import train_model
from tagger.train.split import load_training_data
from tests.conftest import DEMO_NO_TEXT, TINY_TRAIN

TWO_VIEWS = DEMO_NO_TEXT.model_copy(update={"catalog": DEMO_NO_TEXT.catalog.model_copy(
    update={"image": ("image", "image_2")})})
FP32 = TagConfig(precision="fp32")


@pytest.fixture(scope="module")
def two_view_lake(tmp_path_factory):
    """A demo-style catalog of 240 products with two partial photos each, ingested and
    trained on (image only)."""
    root = tmp_path_factory.mktemp("views")
    catalog = generate_catalog(root / "catalog", n_products=320, seed=3, image_size=64,
                               bad_rows=False, views=2)
    lake = root / "lake"
    ingest_catalog(str(catalog), TWO_VIEWS, str(lake))
    config = TINY_TRAIN.model_copy(update=dict(epochs=6, image_size=64, inputs="image", val_fraction=0.3, test_fraction=0.0))
    return catalog, lake, train_model(str(lake), config)


def _val_map(scorer, lake, data, rows, shards, hashes, more) -> float:
    scores = scorer.score(str(lake), shards, hashes, desc="views", more=more).logits
    heads = scorer.arrays.softmax_slices
    return mean_ap(data.targets[rows], data.mask[rows], ranked(scores, heads))


@pytest.mark.slow
def test_both_views_pooled_beat_either_view_alone_on_validation(two_view_lake):
    _, lake, version = two_view_lake
    storage = open_storage(str(lake))
    card = read_card(storage, version)
    assert card.format == CARD_FORMAT and card.image_pooling in ("mean", "max")
    data = load_training_data(storage)
    assert data.more is not None and all(len(m) == 1 for m in data.more)
    rows = held_out_rows(data, card.config, card.data.snapshot, card.version)["validation"]
    scorer = ImageScorer.of_version(storage, version, FP32)
    first = ([data.shards[i] for i in rows], [data.hashes[i] for i in rows])
    second = ([data.more[i][0]["image_shard"] for i in rows], [data.more[i][0]["image_hash"] for i in rows])
    front = _val_map(scorer, lake, data, rows, *first, None)
    back = _val_map(scorer, lake, data, rows, *second, None)
    both = _val_map(scorer, lake, data, rows, *first, [data.more[i] for i in rows])
    print(f"validation mAP: first photo {front:.4f}, second {back:.4f}, both pooled {both:.4f}")
    assert both > max(front, back) + 0.003, (front, back, both)


@pytest.mark.slow
def test_a_tag_run_pools_every_image_of_a_product(two_view_lake, tmp_path):
    catalog, src, version = two_view_lake
    lake = tmp_path / "lake"
    shutil.copytree(src, lake)
    storage = open_storage(str(lake))
    card = read_card(storage, version)
    data = load_training_data(storage)
    tag_catalog(str(lake), model_version=version, config=FP32)
    latest = read_latest(storage).to_pylist()
    # a product with a label left unknown, which the model tags
    pid = next(r["product_id"] for r in latest if r["source"] == "model")
    model_rows = {(r["attribute"], r["value"]): r["score"] for r in latest
                  if r["product_id"] == pid and r["source"] == "model"}
    # the product's two images scored alone, pooled by hand as the card says
    scorer = ImageScorer.of_version(storage, version, FP32)
    i = data.product_ids.index(pid)
    more = data.more[i][0]
    views = scorer.score(str(lake), [data.shards[i], more["image_shard"]], [data.hashes[i], more["image_hash"]],
                         desc="by hand").logits
    pooled = views.mean(axis=0) if card.image_pooling == "mean" else views.max(axis=0)
    scores = apply_temperature(pooled[None], scorer.arrays.temperature, scorer.arrays.softmax_slices)[0]
    outputs = card.taxonomy.outputs
    for (attribute, value), score in model_rows.items():
        assert score == pytest.approx(float(scores[outputs.index((attribute, value))]), abs=1e-5)

    # a new back photo is a changed product: the next incremental run tags it alone
    shutil.copytree(catalog.parent, tmp_path / "catalog")
    images = tmp_path / "catalog" / "images"
    other = data.product_ids[(i + 1) % len(data.product_ids)]
    shutil.copy(images / f"{other}-2.jpg", images / f"{pid}-2.jpg")
    ingested = ingest_catalog(str(tmp_path / "catalog" / catalog.name), TWO_VIEWS, str(lake))
    assert ingested.changed == 1
    again = tag_catalog(str(lake), model_version=version, config=FP32)
    assert again.tagged == 1
