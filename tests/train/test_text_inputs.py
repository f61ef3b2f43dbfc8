"""Models that read the product's title: trained where the lake has text, scored with it by
every path, and today's image model where asked for or where there is no text."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tests.conftest import DEMO_TAXONOMY, TINY_TRAIN


def _products(lake):
    from tagger.io.storage import open_storage
    from tagger.lake import read_products

    return read_products(open_storage(str(lake))).to_pylist()


def test_a_lake_with_titles_trains_a_fused_model_and_every_product_is_tagged(trained_lake):
    from tagger.io.storage import open_storage
    from tagger.lake import read_latest
    from tagger.model.versions import read_card
    from tagger.tag.run import tag_catalog

    lake, version = trained_lake
    card = read_card(open_storage(str(lake)), version)
    assert card.inputs == "image+text" and card.text.buckets == TINY_TRAIN.text_buckets
    assert card.config["inputs"] == "image+text"  # what ran, resolved from auto
    # the photo's weight, chosen per single attribute on validation, is what a loaded model scores with
    from tagger.labels import single_slices
    from tagger.model.text import fused_network
    from tagger.model.versions import load_model
    from tagger.quality.image_weight import WEIGHTS

    assert set(card.image_weight) == set(single_slices(card.taxonomy))
    assert set(card.image_weight.values()) <= set(WEIGHTS)
    loaded, _ = load_model(open_storage(str(lake)), version)
    np.testing.assert_array_equal(fused_network(loaded).image_weight.numpy(), card.image_weight_vector())
    products = _products(lake)
    untitled = [p["product_id"] for p in products if not p["text"]]
    assert untitled and len(untitled) < len(products)  # the demo has products without a title
    result = tag_catalog(str(lake), model_version=version)
    assert result.tagged == len(products)
    tagged = set(read_latest(open_storage(str(lake)))["product_id"].to_pylist())
    assert set(untitled) <= tagged  # tagged from the image alone


def test_onnx_and_torch_score_the_fused_model_alike_and_the_text_matters(trained_lake):
    from tagger.config import TagConfig
    from tagger.io.storage import open_storage
    from tagger.model.scoring import ImageScorer

    lake, version = trained_lake
    products = _products(lake)[:24]
    args = (str(lake), [p["image_shard"] for p in products], [p["image_hash"] for p in products])
    texts = [p["text"] for p in products]
    storage = open_storage(str(lake))
    onnx = ImageScorer.of_version(storage, version, TagConfig(runtime="onnx")).score(*args, desc="t", texts=texts)
    torch_ = ImageScorer.of_version(storage, version, TagConfig(runtime="torch", precision="fp32")).score(*args, desc="t", texts=texts)
    np.testing.assert_allclose(onnx.logits, torch_.logits, atol=1e-4)
    untitled = ImageScorer.of_version(storage, version, TagConfig(runtime="onnx")).score(
        *args, desc="t", texts=[None] * len(products))
    assert np.abs(untitled.logits - onnx.logits).max() > 1e-3
    with pytest.raises(ValueError, match="reads the products' text"):
        ImageScorer.of_version(storage, version, TagConfig()).score(*args, desc="t")


def test_a_changed_title_retags_exactly_that_product(trained_lake, catalog):
    from tagger.ingest.run import ingest_catalog
    from tagger.tag.run import tag_catalog

    lake, version = trained_lake
    tag_catalog(str(lake), model_version=version)
    rows = list(csv.DictReader(open(catalog, newline="")))
    known = {p["product_id"] for p in _products(lake)}
    target = next(r for r in rows if r["title"] and r["id"] in known)
    target["title"] = "Plain black trousers"
    with open(catalog, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ingested = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    assert (ingested.changed, ingested.new) == (1, 0)
    assert tag_catalog(str(lake), model_version=version).tagged == 1


def test_inputs_image_trains_todays_model_on_a_lake_with_titles(trained_lake):
    from tagger.io.storage import open_storage
    from tagger.model.versions import load_model
    from tagger.train.run import train_model

    lake, _ = trained_lake
    version = train_model(str(lake), TINY_TRAIN.model_copy(update={"inputs": "image", "epochs": 1}))
    model, card = load_model(open_storage(str(lake)), version)
    assert card.inputs == "image" and card.text is None
    assert "text" not in card.model_dump(mode="json")  # written as cards before text were
    assert not any(k.startswith(("text.", "image.")) for k in model.model.state_dict())


def test_text_inputs_on_a_lake_without_text_say_how_to_map_it(tmp_path, catalog_dir):
    from catalog_schemas.taxonomy import load_taxonomy
    from tagger.ingest.run import ingest_catalog
    from tagger.train.run import train_model

    tax = load_taxonomy(DEMO_TAXONOMY)
    no_text = tax.model_copy(update={"catalog": tax.catalog.model_copy(update={"text": ()})})
    lake = str(tmp_path / "lake")
    ingest_catalog(str(catalog_dir / "catalog.csv"), no_text, lake)
    with pytest.raises(ValueError, match="no product of the lake has any.*text: \\[title\\]"):
        train_model(lake, TINY_TRAIN.model_copy(update={"inputs": "text"}))
