"""The new latest and state tables, merged as sorted streams into local files.

Latest: the previous table without the re-tagged products and those gone from the catalog,
plus the run's rows. State: the tagged products' rows replace theirs, products gone from
the catalog drop out. Both previous tables are read BATCH_ROWS rows at a time and merged in
product id order with the run's rows (all sorted), so what is held is a batch and, for
latest, a part of the run's rows: the run hands them over a scoring chunk at a time. The
caller uploads the files (tagger.tag.run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog_schemas.tables import TAG_LATEST, TAG_STATE
from tagger.io.storage import PARQUET_OPTIONS, ROW_GROUP_ROWS, Storage, read_table_or_empty
from tagger.lake import LATEST_PATH, STATE_PATH
from tagger.tag import streams
from tagger.tag.rows import TAG_ORDER
from tagger.tag.streams import (Unsorted, Upto, member, open_parquet, sorted_batches,
                                sorted_unique)


@dataclass
class Merged:
    """What merging the latest table did."""

    rows: int = 0
    previous_rows: int = 0
    removed: int = 0
    tags_per_attribute: dict[str, int] = field(default_factory=dict)
    # previous rows of re-tagged and removed products, in the previous table's order: a
    # local file next to the merged one (a full run touches every row)
    affected_path: Path | None = None

    @property
    def previous_affected(self) -> pa.Table:
        """The previous rows of re-tagged and removed products, as one table."""
        if self.affected_path is None:
            return TAG_LATEST.empty_table()
        return pq.read_table(self.affected_path).cast(TAG_LATEST)


def merge_latest(storage: Storage, fresh: pa.Table | Iterable[pa.Table],
                 tagged_ids: pa.ChunkedArray | pa.Array, current_ids: pa.ChunkedArray | pa.Array,
                 out: Path, meta: dict[str, str]) -> Merged:
    """Write the new latest table to `out`: the previous one without the re-tagged products
    and those gone from the catalog, plus `fresh`: the run's rows sorted by TAG_ORDER, as one
    table or as tables in that order, pulled as the merge reaches them (so a run can score
    while it merges). `current_ids`: every product id of the catalog, sorted (scan_products' ids)."""
    parts = iter([fresh]) if isinstance(fresh, pa.Table) else iter(fresh)
    with open_parquet(storage, LATEST_PATH) as previous:
        return _merge(previous, parts, tagged_ids, current_ids, out, meta)


def _latest_batches(f: pq.ParquetFile | None) -> Iterator[pa.Table]:
    """The previous latest table in batches of BATCH_ROWS rows, as TAG_LATEST tables."""
    for batch in f.iter_batches(batch_size=streams.BATCH_ROWS) if f is not None else ():
        t = pa.Table.from_batches([batch])
        if "needs_review" not in t.column_names:  # written before needs_review: all published
            t = t.append_column("needs_review", pa.repeat(pa.scalar(False), t.num_rows))
        yield t.select(TAG_LATEST.names).cast(TAG_LATEST)


def _count_attributes(counts: dict[str, int], part: pa.Table) -> None:
    for vc in pc.value_counts(part["attribute"]).to_pylist():
        counts[vc["values"]] = counts.get(vc["values"], 0) + vc["counts"]


def _merge(previous: pq.ParquetFile | None, fresh: Iterator[pa.Table], tagged_ids, current_ids,
           out: Path, meta: dict[str, str]) -> Merged:
    merged = Merged(affected_path=out.with_name(out.stem + ".affected.parquet"))
    current = current_ids.combine_chunks() if isinstance(current_ids, pa.ChunkedArray) else current_ids
    retagged = sorted_unique(tagged_ids)
    pending = Upto((t.select(TAG_LATEST.names).cast(TAG_LATEST) for t in fresh), TAG_LATEST)
    gone_ids = []
    schema = TAG_LATEST.with_metadata({**TAG_LATEST.metadata, **meta})
    with pq.ParquetWriter(out, schema, **PARQUET_OPTIONS) as writer, \
            pq.ParquetWriter(merged.affected_path, TAG_LATEST, **PARQUET_OPTIONS) as affected:
        def emit(part: pa.Table) -> None:
            if part.num_rows:
                writer.write_table(part.replace_schema_metadata(schema.metadata),
                                   row_group_size=streams.BATCH_ROWS)
                merged.rows += part.num_rows
                _count_attributes(merged.tags_per_attribute, part)

        for batch in _latest_batches(previous):
            merged.previous_rows += batch.num_rows
            gone = pc.invert(member(batch["product_id"], current))  # products no longer in the catalog
            gone_ids.append(pc.unique(batch["product_id"].filter(gone)))
            drop = pc.or_(gone, member(batch["product_id"], retagged))
            gone_or_retagged = batch.filter(drop)
            if gone_or_retagged.num_rows:
                affected.write_table(gone_or_retagged)
            kept = batch.filter(pc.invert(drop))
            # fresh rows up to this batch's last product (ids never overlap with kept rows)
            new = pending.upto(batch["product_id"][-1].as_py()) if batch.num_rows else None
            if new is not None and new.num_rows:
                kept = pa.concat_tables([kept, new]).sort_by(TAG_ORDER)
            emit(kept)
        for part in pending.drain():
            emit(part)
    merged.removed = pc.count_distinct(pa.chunked_array(gone_ids, pa.string())).as_py()
    return merged


STATE_COLUMNS = ["product_id", "image_hash", "updated_at"]  # the products columns state_rows reads


def state_rows(tagged: pa.Table, model_version: str, run_id: str) -> pa.Table:
    """TAG_STATE rows of the products a run tagged (PRODUCT_COLUMNS rows), sorted."""
    n = tagged.num_rows
    return pa.table([tagged["product_id"], tagged["image_hash"], tagged["updated_at"],
                     pa.repeat(pa.scalar(model_version, pa.string()), n),
                     pa.repeat(pa.scalar(run_id, pa.string()), n)], schema=TAG_STATE).sort_by("product_id")


def merge_state(storage: Storage, new: Callable[[], Iterable[pa.Table]], new_ids: pa.Array,
                current_ids: pa.Array, out: Path) -> None:
    """Write the new state table to `out`: the previous one without the products in `new`
    and those gone from the catalog, plus `new`. `new`: a function that gives the new rows
    (state_rows) as tables in product id order, pulled as the merge reaches them; called
    again if the previous table turns out unsorted. `new_ids`: new's product ids, sorted."""
    with open_parquet(storage, STATE_PATH) as previous:
        try:
            _merge_state_streamed(previous, iter(new()), new_ids, current_ids, out)
        except Unsorted:  # a state table not written by us: whole-table update
            whole = pa.concat_tables([TAG_STATE.empty_table(), *new()])
            _merge_state_whole(read_table_or_empty(storage, STATE_PATH, TAG_STATE), whole, current_ids, out)


def _merge_state_streamed(previous: pq.ParquetFile | None, new: Iterator[pa.Table], new_ids: pa.Array,
                          current_ids: pa.Array, out: Path) -> None:
    pending = Upto(new, TAG_STATE)
    with pq.ParquetWriter(out, TAG_STATE, **PARQUET_OPTIONS) as writer:
        for batch in sorted_batches(previous, TAG_STATE):
            ids = batch["product_id"]
            kept = batch.filter(pc.and_(pc.invert(member(ids, new_ids)), member(ids, current_ids)))
            fresh = pending.upto(ids[-1].as_py())
            if fresh.num_rows:
                kept = pa.concat_tables([kept, fresh]).sort_by("product_id")
            if kept.num_rows:
                writer.write_table(kept, row_group_size=ROW_GROUP_ROWS)
        for part in pending.drain():
            writer.write_table(part, row_group_size=ROW_GROUP_ROWS)


def _merge_state_whole(state: pa.Table, new: pa.Table, current_ids: pa.Array, out: Path) -> None:
    drop = sorted_unique(new["product_id"])
    keep = pc.and_(pc.invert(pc.is_in(state["product_id"], value_set=drop)),
                   pc.is_in(state["product_id"], value_set=current_ids))
    pq.write_table(pa.concat_tables([state.filter(keep), new]).sort_by("product_id"), out,
                   row_group_size=ROW_GROUP_ROWS, **PARQUET_OPTIONS)
