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
