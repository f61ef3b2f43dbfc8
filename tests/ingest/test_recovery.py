"""A damaged lake table: every reader names the file and the way back, and
`ingest --rebuild` rebuilds the catalog tables from the export and the stored shards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tagger.config import IngestConfig
from tagger.ingest.run import ingest_catalog
from tagger.io.storage import CorruptTable, open_storage, read_table
from tagger.lake import PRODUCTS_PATH, read_lake_taxonomy, read_latest, read_products
from tests.conftest import DEMO_TAXONOMY, FIXTURES, TINY_TRAIN

KEY = ["product_id", "category", "image_uri", "image_hash", "image_shard", "labels"]


def _truncate(path: Path) -> None:
    """What a bad copy leaves: the first half of the file, without the Parquet footer."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}


def test_a_damaged_products_table_names_the_file_and_the_rebuild(catalog, tmp_path):
    lake = tmp_path / "lake"
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    _truncate(lake / PRODUCTS_PATH)
    storage = open_storage(lake)
    with pytest.raises(CorruptTable) as e:
        read_products(storage)
    message = str(e.value)
    assert str(lake / PRODUCTS_PATH) in message and "magic bytes" in message
    assert f"tagger ingest CATALOG --taxonomy FILE --lake {lake} --rebuild" in message
    assert "\n" not in message
    with pytest.raises(CorruptTable) as again:  # a plain re-ingest refuses the same way
        ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    assert str(again.value) == message


def test_rebuild_restores_the_products_without_storing_images_again(catalog, tmp_path):
    lake = tmp_path / "lake"
    config = IngestConfig(shard_size=25)
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), config)
    before = read_products(open_storage(lake)).select(KEY)
    shards = _mtimes(lake / "catalog/images")
    _truncate(lake / PRODUCTS_PATH)
    _truncate(lake / "catalog/rejects/rejects.parquet")
    result = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), config.model_copy(update={"rebuild": True}))
    assert (result.products, result.rejected, result.images_stored, result.shards_written) == (60, 3, 0, [])
    assert read_products(open_storage(lake)).select(KEY).equals(before)
    assert _mtimes(lake / "catalog/images") == shards  # not one shard rewritten
    assert read_table(open_storage(lake), "catalog/rejects/rejects.parquet").num_rows == 3


def test_rebuild_stores_again_only_the_images_of_a_damaged_shard(catalog, tmp_path):
    lake = tmp_path / "lake"
    config = IngestConfig(shard_size=25)
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), config)
    before = read_products(open_storage(lake)).select(KEY)
    shards = _mtimes(lake / "catalog/images")
    damaged = sorted(shards)[0]
    stored = pq.read_metadata(lake / "catalog/images" / damaged).num_rows
    _truncate(lake / "catalog/images" / damaged)
    result = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), config.model_copy(update={"rebuild": True}))
    assert result.images_stored == stored and result.shards_written == [damaged]
    assert read_products(open_storage(lake)).select(KEY).equals(before)
    after = _mtimes(lake / "catalog/images")
    assert {n: t for n, t in after.items() if n != damaged} == {n: t for n, t in shards.items() if n != damaged}
    assert pq.read_metadata(lake / "catalog/images" / damaged).num_rows == stored  # readable again


def _old_lake(tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    shutil.copytree(FIXTURES / "lake_v0", lake)
    return lake


def test_train_refuses_a_damaged_products_table_with_the_same_message(tmp_path):
    from tagger.train.run import train_model

    lake = _old_lake(tmp_path)
    _truncate(lake / PRODUCTS_PATH)
    with pytest.raises(CorruptTable) as e:
        read_products(open_storage(lake))
    with pytest.raises(CorruptTable) as trained:
        train_model(str(lake), TINY_TRAIN)
    assert str(trained.value) == str(e.value)


def test_tag_refuses_a_damaged_products_table_with_the_same_message(tmp_path):
    from tagger.tag.run import tag_catalog

    lake = _old_lake(tmp_path)
    _truncate(lake / PRODUCTS_PATH)
    with pytest.raises(CorruptTable) as e:
        read_products(open_storage(lake))
    with pytest.raises(CorruptTable) as tagged:
        tag_catalog(str(lake))
    # the same file and remedy; pyarrow words its reason a little differently for a file
    assert (tagged.value.url, tagged.value.remedy) == (e.value.url, e.value.remedy)
    assert "magic bytes not found" in tagged.value.detail


def test_damaged_tag_tables_and_taxonomy_say_what_rebuilds_them(tmp_path):
    lake = _old_lake(tmp_path)
    _truncate(lake / "tags/latest/tags.parquet")
    with pytest.raises(CorruptTable, match=f"tags.parquet is damaged.*tagger tag --lake {lake} --full"):
        read_latest(open_storage(lake))
    (lake / "catalog/taxonomy.json").write_text('{"name": ')
    with pytest.raises(CorruptTable, match="taxonomy.json is damaged.*--rebuild"):
        read_lake_taxonomy(open_storage(lake))
