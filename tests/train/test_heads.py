"""head: softmax end to end: a tiny model trains with one softmax per `single` attribute,
registers a card that says so, and tag runs, both runtimes and evaluations score and decide
it as a softmax (its single attributes' scores sum to 1, at most one value is emitted)."""

from datetime import date

import duckdb
import numpy as np
import pytest

from catalog_schemas.card import CARD_FORMAT
from tagger.config import TagConfig
from tagger.demo.sample import generate_catalog
from tagger.io.storage import open_storage
from tagger.lake import read_products
from tagger.model.evaluate import evaluate_model
from tagger.model.scoring import card_arrays, score_images
from tagger.model.versions import load_model, read_card
from tagger.tag.rows import compute_tag_rows
from tagger.tag.run import tag_catalog
from tests.conftest import DEMO_TAXONOMY, TINY_TRAIN
from tests.conftest import SMALL_TAXONOMY as TAX


@pytest.fixture(scope="module")
def softmax_lake(catalog_dir, tmp_path_factory):
    from tagger.ingest.run import ingest_catalog
    from tagger.train.run import train_model

    lake = tmp_path_factory.mktemp("softmax") / "lake"
    ingest_catalog(str(catalog_dir / "catalog.csv"), DEMO_TAXONOMY, str(lake))
    version = train_model(str(lake), TINY_TRAIN.model_copy(update=dict(head="softmax")))
    return lake, version


def _singles(taxonomy):
    return {a.name: taxonomy.slices[a.name] for a in taxonomy.attributes if a.kind == "single"}


@pytest.mark.slow
def test_softmax_model_registers_tags_scores_alike_in_both_runtimes_and_evaluates(
        softmax_lake, tmp_path, monkeypatch):
    monkeypatch.setenv("TAGGER_ONNX_CACHE", str(tmp_path / "onnx-cache"))
    lake, version = softmax_lake
    storage = open_storage(lake)
    card = read_card(storage, version)
    assert card.head == "softmax" and card.format == CARD_FORMAT and card.config["head"] == "softmax"
    singles = _singles(card.taxonomy)
    assert card_arrays(card).softmax_slices == tuple(singles.values())
    # Validation chose per attribute whether to abstain below the tuned thresholds; one that
    # always decides has thresholds 0 and a tag for every test product of known value.
    deciding = [a for a in singles if set(card.thresholds[a].values()) == {0.0}]
    assert deciding, "no softmax attribute always decides: validation's choice was not applied"
    for a in deciding:
        assert card.test_metrics["per_attribute"][a]["coverage"] == 1.0

    # Both runtimes: a softmax per single attribute (sums to 1), the same scores within 2e-4.
    model, _ = load_model(storage, version)
    products = read_products(storage).to_pylist()
    shards, hashes = [p["image_shard"] for p in products], [p["image_hash"] for p in products]
    scored = {rt: score_images(model, card, str(lake), shards, hashes,
                               TagConfig(runtime=rt, precision="fp32", workers=0, device="cpu",
                                         batch_size=16), desc=rt,
                               texts=[p["text"] for p in products]).scores
              for rt in ("torch", "onnx")}
    np.testing.assert_allclose(scored["onnx"], scored["torch"], atol=2e-4)
    for sl in singles.values():
        np.testing.assert_allclose(scored["torch"][:, sl].sum(axis=1), 1.0, rtol=1e-5)

    # A tag run: at most one value per product and single attribute.
    result = tag_catalog(str(lake), run_date=date(2026, 1, 2), run_id="softmax")
    assert result.model_version == version and result.latest_rows > 0
    latest = duckdb.sql(f"SELECT * FROM '{lake}/tags/latest/*.parquet'").df()
    model_rows = latest[latest.source == "model"]
    assert len(model_rows) > 0
    single_rows = latest[latest.attribute.isin(list(singles))]
    assert single_rows.groupby(["product_id", "attribute"]).size().max() == 1

    # An evaluation on a catalog it never saw.
    holdout = generate_catalog(tmp_path / "holdout", n_products=20, seed=7, image_size=64)
    summary = evaluate_model(str(lake), str(holdout), name="holdout",
                             config=TagConfig(runtime="torch", workers=0, device="cpu"))
    assert summary["model_version"] == version and summary["products"] == 20
    assert (lake / "models" / version / "evaluations" / "holdout" / "report.md").is_file()




def test_tag_rows_of_a_softmax_card_emit_the_argmax_value_or_nothing():
    products = [dict(product_id=f"p{i}", category=None, image_hash=f"h{i}", labels=[])
                for i in range(2)]
    scores = np.array([[0.5, 0.4, 0.1, 0.9, 0.1],    # red fails its 0.6: no colour
                       [0.1, 0.8, 0.1, 0.2, 0.7]], dtype=np.float32)
    thresholds = np.array([0.6, 0.3, 0.3, 0.5, 0.5], dtype=np.float32)
    rows = compute_tag_rows(TAX, products, scores, thresholds, argmax_slices=[slice(0, 3)])
    got = list(zip(rows["product_id"], rows["attribute"], rows["value"]))
    assert got == [("p0", "features", "logo"), ("p1", "colour", "blue"), ("p1", "features", "zip")]
    # the sigmoid rule would have emitted blue for p0 (the best value passing its threshold)
    today = compute_tag_rows(TAX, products, scores, thresholds)
    assert ("p0", "colour", "blue") in zip(today["product_id"], today["attribute"], today["value"])
