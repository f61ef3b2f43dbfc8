"""What ingest holds per product: the images this run stores join KnownImages' sorted numpy
arrays (no dict of every new hash), and the merge of the products runs reads RUN_ROWS rows
of each run at a time. Neither changes a table."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tagger.ingest import products as ingest_products
from tagger.ingest.shards import KnownImages
from tests.ingest.test_chunks import _counts, _export, _ingest, _tables


def test_known_images_fold_added_hashes_into_the_arrays(monkeypatch):
    monkeypatch.setattr(KnownImages, "FOLD_EVERY", 2)
    known = KnownImages(pa.chunked_array([["c", "a"]]), pa.chunked_array([["s1", "s1"]]))
    known.update({"b": "s2"})
    assert known._added == {"b": "s2"}  # below FOLD_EVERY: waits in the dict
    known.update({"e": "s3", "a": "s4"})  # "a" stored again: the newest shard wins, as before
    assert known._added == {} and known._hashes.tolist() == [b"a", b"b", b"c", b"e"]
    assert {h: known[h] for h in "abce"} == {"a": "s4", "b": "s2", "c": "s1", "e": "s3"}
    assert "d" not in known and "e" in known
    with pytest.raises(KeyError):
        known["d"]


def test_known_images_of_batches_are_those_of_one_table():
    batches = [(pa.array(["d", "b", "d"]), pa.array(["s1", "s1", "s2"])),
               (pa.array(["a", "b", "ccc"]), pa.array(["s3", "s4", "s3"])), (pa.array([], pa.string()), pa.array([], pa.string()))]
    whole = KnownImages(pa.chunked_array([h for h, _ in batches]), pa.chunked_array([s for _, s in batches]))
    parts = KnownImages.of_batches(iter(batches))
    # every hash once, its first row's shard wherever the batches cut (d: s1, b: s1)
    assert {h: parts[h] for h in ["a", "b", "ccc", "d"]} == {h: whole[h] for h in ["a", "b", "ccc", "d"]} \
        == {"a": "s3", "b": "s1", "ccc": "s3", "d": "s1"}
    assert parts._hashes.tolist() == whole._hashes.tolist() == [b"a", b"b", b"ccc", b"d"]
    assert "e" not in KnownImages.of_batches(iter([]))


def test_folding_and_small_merge_batches_give_the_same_tables(tmp_path, monkeypatch):
    export = _export(tmp_path, "csv")
    want = _counts(_ingest(export, tmp_path / "plain", 4, "night1"))
    monkeypatch.setattr(KnownImages, "FOLD_EVERY", 2)
    monkeypatch.setattr(ingest_products, "RUN_ROWS", 3)
    got = _counts(_ingest(export, tmp_path / "folded", 4, "night1"))
    assert got == want
    a, b = _tables(tmp_path / "plain"), _tables(tmp_path / "folded")
    assert a["products"].equals(b["products"]) and a["rejects"].equals(b["rejects"])
    assert a["shards"] == b["shards"]


def test_a_chunks_previous_rows_come_only_from_the_row_groups_that_hold_them(tmp_path):
    """rows_of reads the row groups whose product id range takes in a wanted id (Parquet
    statistics) and gives exactly what a filter of the whole table gives."""
    import pyarrow.parquet as pq

    from catalog_schemas.tables import PRODUCTS
    from tagger.ingest.products import PreviousProducts, _row_groups_holding
    from tagger.io.parquet import PARQUET_OPTIONS

    from datetime import datetime, timezone

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ids = [f"P{i:03d}" for i in range(40)]
    table = pa.Table.from_pylist([dict(product_id=p, image_uri=f"/i/{p}.jpg", image_version="1", image_hash=f"h{p}",
                                       image_shard="s", labels=[], first_seen=now, updated_at=now,
                                       ingest_run_id="r") for p in ids], schema=PRODUCTS)
    path = tmp_path / "products.parquet"
    pq.write_table(table, path, row_group_size=8, **PARQUET_OPTIONS)  # groups of P000-P007, P008-...
    wanted = ["P009", "P011", "P033", "nope"]
    with pq.ParquetFile(path) as f:
        assert _row_groups_holding(f, pa.array(sorted(wanted))) == [1, 4]
    got = PreviousProducts(path).rows_of(wanted)
    assert got.equals(table.filter(pa.compute.is_in(table["product_id"], value_set=pa.array(wanted))))
