"""A lake written by an earlier version of the package (tests/fixtures/lake_v0, made by the
flat-module layout) opens and tags with today's code: its products, card and tag tables read,
an incremental run finds nothing to do, and a full re-tag gives the tags it had."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from tagger.cli import main
from tagger.io.storage import open_storage
from tagger.lake import read_latest, read_products
from tagger.model.versions import list_versions, load_model
from tagger.tag.run import tag_catalog
from tests.conftest import FIXTURES

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
