"""The streamed merge of the latest tag table equals filter + concat + sort of the whole
tables, whatever the batch boundaries; the Arrow plan selects what the row-wise rule did."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from catalog_schemas.tables import TAG_LATEST, TAG_STATE
from tagger.io.storage import open_storage, read_table, write_table
from tagger.lake import LATEST_PATH, PRODUCTS_PATH, STATE_PATH
from tagger.tag import streams
from tagger.tag.merge import merge_latest
from tagger.tag.plan import scan_products, select_products
from tagger.tag.rows import PRODUCT_SCHEMA, TAG_ORDER
from tagger.tag.run import _write_state

NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)
ATTRS = [("colour", ["red", "blue"]), ("pattern", ["solid", "dotted"]), ("features", ["logo", "zip"])]


def _rows(pids: list[str], run_id: str, rng: random.Random) -> pa.Table:
    rows = []
    for pid in pids:
        for attribute, values in ATTRS:
            for value in values:
                if rng.random() < 0.6:
                    rows.append(dict(product_id=pid, attribute=attribute, value=value, score=0.7,
                                     source="model", image_hash="h" + pid, needs_review=False,
                                     model_version="m1", run_id=run_id, tagged_at=NOW))
    return pa.Table.from_pylist(rows, schema=TAG_LATEST).sort_by(TAG_ORDER)


@pytest.mark.parametrize("batch_rows", [1, 3, 7, 1000])
def test_streamed_merge_equals_whole_table_merge(tmp_path, monkeypatch, batch_rows):
    monkeypatch.setattr(streams, "BATCH_ROWS", batch_rows)
    rng = random.Random(batch_rows)
    storage = open_storage(tmp_path / "lake")
    before = [f"P{i:03d}" for i in range(1, 40)]
    write_table(storage, LATEST_PATH, _rows(before, "night1", rng))
    removed = {"P001", "P017", "P039"}
    retagged = ["P002", "P018", "P038"]
    new = ["P000", "P0175", "P050", "P051"]  # before the first, between two, after the last
    current = sorted(set(before) - removed | set(new))
    fresh = _rows(sorted(retagged + new), "night2", rng)
    tagged_ids = pa.chunked_array([pa.array(sorted(retagged + new))])
    current_ids = pa.chunked_array([pa.array(current)])

    out = tmp_path / "merged.parquet"
    merged = merge_latest(storage, fresh, tagged_ids, current_ids, out, {"run_id": "night2"})

    previous = read_table(storage, LATEST_PATH, TAG_LATEST)
    keep = pc.and_(pc.invert(pc.is_in(previous["product_id"], value_set=tagged_ids)),
                   pc.is_in(previous["product_id"], value_set=current_ids))
    expected = pa.concat_tables([previous.filter(keep), fresh]).sort_by(TAG_ORDER)
    import pyarrow.parquet as pq

    got = pq.read_table(out).cast(TAG_LATEST)
    assert got.equals(expected)
    assert (merged.rows, merged.previous_rows, merged.removed) == (
        expected.num_rows, previous.num_rows, len(removed))
    counts = expected.group_by("attribute").aggregate([("value", "count")]).to_pylist()
    assert merged.tags_per_attribute == {c["attribute"]: c["value_count"] for c in counts}
    affected = set(retagged) | removed
    assert set(merged.previous_affected["product_id"].to_pylist()) == affected & set(
        previous["product_id"].to_pylist())


def test_unsorted_previous_table_loses_no_row(tmp_path, monkeypatch):
    """A latest table not in TAG_ORDER (not written by us) still merges to the right rows."""
    monkeypatch.setattr(streams, "BATCH_ROWS", 5)
    rng = random.Random(0)
    storage = open_storage(tmp_path / "lake")
    previous = _rows([f"P{i:03d}" for i in range(30)], "night1", rng)
    shuffled = previous.take(pa.array(rng.sample(range(previous.num_rows), previous.num_rows)))
    write_table(storage, LATEST_PATH, shuffled)
    fresh = _rows(["P003", "P100"], "night2", rng)
    current = pa.chunked_array([pa.array([f"P{i:03d}" for i in range(1, 30)] + ["P100"])])
    merge_latest(storage, fresh, pa.chunked_array([pa.array(["P003", "P100"])]), current,
                       tmp_path / "m.parquet", {})
    import pyarrow.parquet as pq

    got = pq.read_table(tmp_path / "m.parquet").cast(TAG_LATEST).sort_by(TAG_ORDER)
    keep = pc.invert(pc.is_in(previous["product_id"], value_set=pa.array(["P000", "P003"])))
    assert got.equals(pa.concat_tables([previous.filter(keep), fresh]).sort_by(TAG_ORDER))


def test_arrow_selection_matches_the_row_rule():
    rng = np.random.default_rng(0)
    n = 200
    ids = [f"P{i:04d}" for i in range(n)]
    hashes = [f"h{int(rng.integers(5))}" for _ in range(n)]
    ts = [datetime(2026, 1, 1 + int(rng.integers(3)), tzinfo=timezone.utc) for _ in range(n)]
    products = pa.table({"product_id": ids, "image_hash": hashes,
                         "updated_at": pa.array(ts, pa.timestamp("us", tz="UTC"))})
    state_rows = []
    for i in rng.choice(n, size=150, replace=False):
        state_rows.append(dict(
            product_id=ids[i],
            image_hash=hashes[i] if rng.random() < 0.9 else "other",
            product_updated_at=ts[i] if rng.random() < 0.9 else datetime(2025, 1, 1, tzinfo=timezone.utc),
            model_version="m1" if rng.random() < 0.9 else "m0", run_id="r"))
    state = pa.Table.from_pylist(sorted(state_rows, key=lambda r: r["product_id"]), schema=TAG_STATE)
    by_id = {s["product_id"]: s for s in state_rows}
    expected = [i for i in range(n) if (s := by_id.get(ids[i])) is None or s["model_version"] != "m1"
                or s["image_hash"] != hashes[i] or s["product_updated_at"] != ts[i]]
    assert 50 < len(expected) < n
    assert select_products(products, state, "m1", full=False).tolist() == expected
    assert select_products(products, state, "m1", full=True).tolist() == list(range(n))
    assert select_products(products, TAG_STATE.empty_table(), "m1", False).tolist() == list(range(n))


def _catalog_tables(rng: np.random.Generator, n: int = 120):
    """A products table (PRODUCT_SCHEMA, sorted) and a state table covering most of it, some
    rows stale, plus state rows of products gone from the catalog."""
    ids = [f"P{i:04d}" for i in range(n)]
    ts = [datetime(2026, 1, 1 + int(rng.integers(3)), tzinfo=timezone.utc) for _ in range(n)]
    products = pa.Table.from_pylist(
        [dict(product_id=p, category=None, image_hash=f"h{p}", image_shard="s.parquet",
              labels=[("colour", ["red"])], updated_at=t) for p, t in zip(ids, ts)],
        schema=PRODUCT_SCHEMA)
    state_rows = [dict(product_id=p, image_hash=f"h{p}" if rng.random() < 0.9 else "old",
                       product_updated_at=t, model_version="m1" if rng.random() < 0.9 else "m0",
                       run_id="r")
                  for p, t in zip(ids, ts) if rng.random() < 0.8]
    state_rows += [dict(product_id=f"P{i:04d}x", image_hash="h", product_updated_at=NOW,
                        model_version="m1", run_id="r") for i in (5, 60, n - 1)]  # gone products
    state = pa.Table.from_pylist(sorted(state_rows, key=lambda r: r["product_id"]), schema=TAG_STATE)
    return products, state


@pytest.mark.parametrize("batch_rows", [1, 7, 1000])
@pytest.mark.parametrize("shuffled_state", [False, True])
@pytest.mark.parametrize("spill", [False, True])
def test_streamed_scan_and_state_equal_whole_tables(tmp_path, monkeypatch, batch_rows, shuffled_state, spill):
    """scan_products and _write_state read products and state in batches, in step; they give
    what select_products and a whole-table state update give, whatever the batch size, and
    fall back to whole tables for a state not sorted by product id. A spilled scan (a tag
    run's: the products to tag in a local file) gives the same rows back, a part at a time."""
    monkeypatch.setattr(streams, "BATCH_ROWS", batch_rows)
    rng = np.random.default_rng(batch_rows)
    products, state = _catalog_tables(rng)
    storage = open_storage(tmp_path / "lake")
    write_table(storage, PRODUCTS_PATH, products)
    written = state.take(pa.array(rng.permutation(state.num_rows))) if shuffled_state else state
    write_table(storage, STATE_PATH, written)

    def scan_of(**kw):
        folder = tmp_path / f"spill{next(spills)}"
        folder.mkdir()
        scan = scan_products(storage, "m1", spill=folder if spill else None, **kw)
        assert (scan.todo is None) == spill
        todo = pa.concat_tables([PRODUCT_SCHEMA.empty_table(), *scan.batches(13)])
        assert todo.num_rows == scan.tagged and scan.tagged_ids.to_pylist() == todo["product_id"].to_pylist()
        return scan, todo

    spills = iter(range(10))
    scan, todo_rows = scan_of()
    expected = products.take(select_products(products, state, "m1", full=False))
    assert 10 < expected.num_rows < products.num_rows
    assert todo_rows.equals(expected) and scan.products == products.num_rows
    assert scan.ids.to_pylist() == products["product_id"].to_pylist()
    assert scan_of(full=True)[1].equals(products)
    wanted = ["P0003", "P0050", "P0119", "nope"]
    assert scan_of(wanted=wanted)[1]["product_id"].to_pylist() == wanted[:3]

    _write_state(storage, scan, "m2", "night2")
    got = read_table(storage, STATE_PATH, TAG_STATE)
    todo = set(todo_rows["product_id"].to_pylist())
    current = set(products["product_id"].to_pylist())
    kept = [r for r in state.to_pylist() if r["product_id"] in current and r["product_id"] not in todo]
    new = [dict(product_id=r["product_id"], image_hash=r["image_hash"], product_updated_at=r["updated_at"],
                model_version="m2", run_id="night2") for r in todo_rows.to_pylist()]
    assert got.to_pylist() == sorted(kept + new, key=lambda r: r["product_id"])
