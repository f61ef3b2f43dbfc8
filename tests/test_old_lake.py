"""A lake written by an earlier version of the package (tests/fixtures/lake_v0, made by the
flat-module layout) opens and tags with today's code: its products, card and tag tables read,
an incremental run finds nothing to do, a full re-tag gives the tags it had, and its products
table (from before the text column) reads as null text and re-ingests without changes."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tagger.cli import main
from tagger.demo.sample import generate_catalog
from tagger.ingest.products import PreviousProducts
from tagger.ingest.run import ingest_catalog
from tagger.io.storage import open_storage
from tagger.lake import PRODUCTS_PATH, TAXONOMY_PATH, read_latest, read_products
from tagger.model.versions import list_versions, load_model
from tagger.tag.run import tag_catalog
from tests.conftest import DEMO_NO_TEXT, FIXTURES

OLD_LAKE = FIXTURES / "lake_v0"


@pytest.fixture
def old_lake(tmp_path) -> Path:
    lake = tmp_path / "lake_v0"
    shutil.copytree(OLD_LAKE, lake)
    return lake


def test_an_old_lake_opens(old_lake):
    storage = open_storage(old_lake)
    assert read_products(storage).num_rows == 40
    [version] = list_versions(storage)
    model, card = load_model(storage, version)
    assert card.version == version and card.taxonomy.num_outputs > 0
    assert read_latest(storage).num_rows > 0


def test_an_old_lake_has_nothing_new_to_tag(old_lake):
    result = tag_catalog(str(old_lake))
    assert (result.products, result.tagged, result.skipped) == (40, 0, 40)


def test_an_old_products_table_reads_as_null_text(old_lake):
    path = old_lake / PRODUCTS_PATH
    assert "text" not in pq.read_schema(path).names  # written before the column existed
    assert read_products(open_storage(old_lake))["text"].null_count == 40
    previous = PreviousProducts(path)
    assert [t["text"].null_count for t in previous.batches()] == [40] and previous.same_as(path)


def test_a_reingest_of_an_old_lake_changes_no_product_for_its_text(old_lake, tmp_path):
    """Today's demo export (with titles) of the fixture's products, ingested with the demo
    taxonomy without its title mapping: a product is changed only where its image bytes differ
    from the fixture's (none where the JPEG encoder is the fixture's), never for the text
    column the old table lacks."""
    storage = open_storage(old_lake)
    taxonomy = (old_lake / TAXONOMY_PATH).read_bytes()
    before = {p["product_id"]: p for p in read_products(storage).to_pylist()}
    export = generate_catalog(tmp_path / "export", n_products=40, seed=3, image_size=48)  # as make_lake_v0.py
    result = ingest_catalog(str(export), DEMO_NO_TEXT, str(old_lake), run_id="again")
    after = {p["product_id"]: p for p in read_products(storage).to_pylist()}
    other_image = {pid for pid in after if after[pid]["image_hash"] != before[pid]["image_hash"]}
    assert (result.new, result.removed, result.changed) == (0, 0, len(other_image))
    assert {pid for pid in after if after[pid]["ingest_run_id"] == "again"} == other_image
    assert all(p["text"] is None for p in after.values())
    assert (old_lake / TAXONOMY_PATH).read_bytes() == taxonomy  # a taxonomy without text dumps as it did


@pytest.mark.slow
def test_a_full_retag_of_an_old_lake_gives_the_tags_it_had(old_lake, capsys):
    before = read_latest(open_storage(old_lake)).sort_by([("product_id", "ascending"),
                                                           ("attribute", "ascending"), ("value", "ascending")])
    assert main(["tag", "--lake", str(old_lake), "--full", "--run-id", "tag-again"]) == 0
    after = read_latest(open_storage(old_lake))
    keys = ["product_id", "attribute", "value", "source", "needs_review"]
    assert after.select(keys).equals(before.select(keys))
    a, b = after["score"].to_numpy(zero_copy_only=False), before["score"].to_numpy(zero_copy_only=False)
    model = pc.equal(after["source"], "model").to_numpy(zero_copy_only=False)
    assert np.allclose(a[model].astype(float), b[model].astype(float), atol=2e-4)  # the stated tolerance
    assert after["run_id"].unique().to_pylist() == ["tag-again"]
