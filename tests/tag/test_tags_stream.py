"""Full tag runs stream like incremental ones: rows go a scoring chunk at a time into the
history file (in row groups) and the latest merge, and the tables are exactly those of the
whole-table computation (one chunk, one batch)."""

from __future__ import annotations

import shutil
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import tagger.io.parquet
import tagger.tag.run as tag_run
from catalog_schemas.tables import TAG_HISTORY, TAG_LATEST, TAG_STATE
from tagger.config import TagConfig
from tagger.io.storage import open_storage, read_table, write_table
from tagger.lake import LATEST_PATH, STATE_PATH, read_products
from tagger.tag import streams
from tagger.tag.changes import compute_tag_changes, compute_tag_changes_of_files
from tagger.tag.rows import TAG_ORDER, rows_table
from tagger.tag.run import score_products, tag_catalog

pytestmark = pytest.mark.slow
# batch 1: every image's scores are the same bits whatever the chunks (a conv over a batch of
# 9 and one of 60 may round differently)
CONFIG = TagConfig(workers=0, precision="fp32", runtime="torch", batch_size=1)


def _history(lake, run_id: str) -> pa.Table:
    (path,) = (lake / "tags" / "history").glob(f"*/{run_id}.parquet")
    return pq.read_table(path).cast(TAG_HISTORY)


def _without_time(t: pa.Table) -> pa.Table:
    """The table without its run's clock (tagged_at) and schema metadata."""
    return t.drop_columns([c for c in ["tagged_at"] if c in t.column_names]).replace_schema_metadata(None)


def _skew_previous_latest(lake) -> None:
    """Make the previous latest differ from what the model predicts (a row lost, one from
    another model, a product gone from the catalog), so the run has changes to report."""
    storage = open_storage(lake)
    latest = read_table(storage, LATEST_PATH, TAG_LATEST)
    extra = latest.slice(0, 1).to_pylist()
    extra[0].update(value="zzz-not-a-value")
    gone = latest.slice(latest.num_rows - 1, 1).to_pylist()
    gone[0].update(product_id="~gone")
    skewed = pa.concat_tables([latest.slice(2), pa.Table.from_pylist(extra + gone, schema=TAG_LATEST)])
    write_table(storage, LATEST_PATH, skewed.sort_by(TAG_ORDER))


def test_a_streamed_full_run_writes_the_tables_of_the_whole_computation(trained_lake, tmp_path, monkeypatch):
    lake, version = trained_lake
    tag_catalog(str(lake), run_id="night1", run_date=date(2026, 11, 1), config=CONFIG)
    _skew_previous_latest(lake)
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    shutil.copytree(lake, whole)
    shutil.copytree(lake, streamed)
    previous = read_table(open_storage(lake), LATEST_PATH, TAG_LATEST)

    one = tag_catalog(str(whole), full=True, run_id="night2", run_date=date(2026, 11, 2), config=CONFIG)

    held = []  # rows of every table the run builds: a chunk's, never the run's
    real_rows_table = tag_run.rows_table

    def rows_table_spy(*args):
        table = real_rows_table(*args)
        held.append(table.num_rows)
        return table

    monkeypatch.setattr(tag_run, "rows_table", rows_table_spy)
    monkeypatch.setattr(streams, "BATCH_ROWS", 7)
    monkeypatch.setattr(tagger.io.parquet, "ROW_GROUP_ROWS", 16)
    many = tag_catalog(str(streamed), full=True, run_id="night2", run_date=date(2026, 11, 2),
                       config=CONFIG.model_copy(update={"chunk_size": 9}))

    history = _history(streamed, "night2")
    assert _without_time(history).equals(_without_time(_history(whole, "night2")))
    # ... and both are what the whole-table build gives: every product's rows, sorted
    ids = sorted(read_products(open_storage(lake))["product_id"].to_pylist())
    rows = score_products(str(lake), version, ids, CONFIG)
    expected = rows_table([rows], version, "night2", history["tagged_at"][0].as_py(), {})
    assert _without_time(history).equals(_without_time(expected))
    for path, schema in ((LATEST_PATH, TAG_LATEST), (STATE_PATH, TAG_STATE)):
        assert _without_time(read_table(open_storage(streamed), path, schema)).equals(
            _without_time(read_table(open_storage(whole), path, schema)))
    latest = read_table(open_storage(streamed), LATEST_PATH, TAG_LATEST)
    assert _without_time(latest).equals(_without_time(expected.cast(TAG_LATEST)))  # a full run: its rows
    assert many.changes == one.changes == compute_tag_changes(previous, expected)
    assert many.changes["removed"] >= 2 and many.removed == one.removed == 1  # "~gone" left
    assert (many.history_rows, many.latest_rows) == (one.history_rows, one.latest_rows) == (
        expected.num_rows, expected.num_rows)

    # What was held: one scoring chunk's rows at a time, written in row groups of 16 rows.
    assert len(held) == -(-len(ids) // 9) and max(held) < expected.num_rows / 3
    meta = pq.ParquetFile(next((streamed / "tags" / "history").glob("*/night2.parquet"))).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes[:-1] == [16] * (len(sizes) - 1) and sum(sizes) == expected.num_rows


def _keys(rows: list[tuple[str, str, str]]) -> pa.Table:
    return pa.table({k: [r[i] for r in rows] for i, k in enumerate(["product_id", "attribute", "value"])})


@pytest.mark.parametrize("batch_rows", [1, 2, 1000])
def test_changes_of_sorted_files_add_up_over_product_ranges(tmp_path, monkeypatch, batch_rows):
    monkeypatch.setattr(streams, "BATCH_ROWS", batch_rows)
    old = _keys([("a", "colour", "red"), ("b", "colour", "red"), ("b", "pattern", "dots"),
                 ("d", "colour", "blue"), ("e", "colour", "red"), ("e", "colour", "blue")])
    new = _keys([("a", "colour", "red"), ("b", "colour", "blue"), ("c", "colour", "red"),
                 ("e", "colour", "red")])
    pq.write_table(old, tmp_path / "old.parquet")
    pq.write_table(new, tmp_path / "new.parquet")
    got = compute_tag_changes_of_files(tmp_path / "old.parquet", tmp_path / "new.parquet")
    assert got == compute_tag_changes(old, new)
    assert (got["added"], got["removed"], got["changed"], got["products_changed"]) == (2, 4, 1, 4)
    shuffled = old.take(pa.array([5, 0, 3, 1, 4, 2]))  # not sorted: compared whole
    pq.write_table(shuffled, tmp_path / "old.parquet")
    assert compute_tag_changes_of_files(tmp_path / "old.parquet", tmp_path / "new.parquet") == got
    assert pc.count_distinct(new["product_id"]).as_py() == 4
