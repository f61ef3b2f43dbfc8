"""The products table of a run: this export's valid rows diffed against the previous
table (new, changed, unchanged, removed), written only when its content changed; and the
lake's copy of the taxonomy. Neither table is held whole: the previous one is read from a
local copy a batch at a time, the new one is built as sorted runs, one per export chunk,
merged into the file that is uploaded."""

from __future__ import annotations

import bisect
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog_schemas.tables import IMAGE_REF, PRODUCTS
from catalog_schemas.taxonomy import Taxonomy
from tagger.ingest.rows import CatalogRow
from tagger.ingest.shards import KnownImages
from tagger.io.parquet import PARQUET_OPTIONS, ROW_GROUP_ROWS
from tagger.io.storage import Storage
from tagger.lake import (
    IMAGES_PREFIX,
    PRODUCTS_DEFAULTS,
    PRODUCTS_PATH,
    RELEASED_PATH,
    TAXONOMY_PATH,
    read_released,
)

log = logging.getLogger(__name__)

# What tags depend on: a product whose image only moved (same content) is not a change, nor
# is one whose other images only moved (more_images compares their hashes, in order). A new
# text is one: the model is to read it, and incremental tagging keys on updated_at.
_CONTENT = ("category", "image_hash", "labels", "text", "more_images")


# The image_shard of a row whose new image waits in the ShardWriter for its shard to fill
# (at the end of a chunk); filled in once every shard is written (fill_pending_shards).
PENDING_SHARD = ""


@dataclass
class ProductChanges:
    """How this run's products compare with the previous table."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0

    def add(self, other: ProductChanges) -> None:
        self.new, self.changed = self.new + other.new, self.changed + other.changed
        self.unchanged += other.unchanged


def _image(row: CatalogRow) -> dict:
    return dict(image_uri=row.image_uri, image_version=row.image_version,
                image_hash=row.image_hash, image_shard=row.image_shard or PENDING_SHARD)


def _record(row: CatalogRow) -> dict:
    return dict(
        product_id=row.product_id, category=row.category, **_image(row),
        labels=sorted(row.labels.items()), text=row.text,
        more_images=[_image(r) for r in row.more] or None, row_digest=row.digest,
    )


def products_table(good: Iterable[CatalogRow], previous: PreviousRows, run_id: str,
                   now: datetime) -> tuple[pa.Table, ProductChanges]:
    """The products table of `good` rows (sorted by id); a product keeps its first_seen,
    and its updated_at and ingest_run_id unless its content changed. Built SLICE_ROWS rows
    at a time: a chunk's rows as dicts (~1 KB each) are what the table's Arrow holds several
    times over. The previous rows are compared as Arrow, column by column: made Python objects
    (their labels and timestamps, ~20 us a row) they were over a third of a re-ingest's time
    under a profiler."""
    tables, changes, good = [], ProductChanges(), iter(good)
    while records := [_record(row) for row in itertools.islice(good, SLICE_ROWS)]:
        tables.append(_dated(pa.Table.from_pylist(records, schema=_UNDATED), previous, run_id, now, changes))
    return (pa.concat_tables(tables) if tables else PRODUCTS.empty_table()), changes


_DATES = ("first_seen", "updated_at", "ingest_run_id")  # what _dated sets
_UNDATED = pa.schema([PRODUCTS.field(n).with_nullable(True) for n in PRODUCTS.names if n not in _DATES])


def _dated(table: pa.Table, previous: PreviousRows, run_id: str, now: datetime,
           changes: ProductChanges) -> pa.Table:
    """`table` (_UNDATED rows) dated against the products' previous rows (counted in
    `changes`): new ones first seen and updated now, changed ones (any _CONTENT column
    differs) updated now, unchanged ones as they were."""
    at = pc.index_in(table["product_id"], value_set=previous.table["product_id"])
    prev = previous.table.take(at)  # null rows for new products
    new = at.is_null().to_numpy(zero_copy_only=False)
    same = ~new
    for name in _CONTENT:
        a, b = table[name].combine_chunks(), prev[name].combine_chunks()
        if name == "more_images":  # images that only moved are no change: their hashes decide
            a, b = _hashes_of(a), _hashes_of(b)
        same &= rows_equal(a, b, null_as_empty=name == "more_images")
    fresh = pa.array(new | ~same)
    changes.new += int(new.sum())
    changes.unchanged += int(same.sum())
    changes.changed += len(table) - int(new.sum()) - int(same.sum())
    stamp = pa.scalar(now, PRODUCTS.field("updated_at").type)
    old = {n: prev[n].combine_chunks() for n in _DATES}
    dated = dict(first_seen=pc.if_else(pa.array(new), stamp, old["first_seen"]),
                 updated_at=pc.if_else(fresh, stamp, old["updated_at"]),
                 ingest_run_id=pc.if_else(fresh, pa.scalar(run_id, pa.string()), old["ingest_run_id"]))
    columns = {n: dated[n] if n in dated else table[n] for n in PRODUCTS.names}
    return pa.table(columns).cast(PRODUCTS)


def _hashes_of(images: pa.Array) -> pa.Array:
    """list<IMAGE_REF> -> list<string> of the image hashes, nulls kept."""
    hashes = pc.struct_field(images.values, "image_hash")
    return pa.ListArray.from_arrays(images.offsets, hashes, mask=images.is_null())


def rows_equal(a: pa.Array, b: pa.Array, *, null_as_empty: bool = False) -> np.ndarray:
    """Row by row, whether two arrays of one type hold equal values (two nulls are equal),
    nested ones (lists, maps, structs) included: the values of lists of equal lengths are
    compared flattened and folded back to their rows. `null_as_empty`: a null list equals []."""
    both_null = (a.is_null().to_numpy(zero_copy_only=False) & b.is_null().to_numpy(zero_copy_only=False))
    if pa.types.is_map(a.type):
        a, b = _as_list(a), _as_list(b)
    if pa.types.is_list(a.type) or pa.types.is_large_list(a.type):
        la, lb = pc.list_value_length(a), pc.list_value_length(b)
        if null_as_empty:
            la, lb = pc.fill_null(la, 0), pc.fill_null(lb, 0)
            both_null |= (la.to_numpy(zero_copy_only=False) == 0) & (lb.to_numpy(zero_copy_only=False) == 0)
        eq = pc.fill_null(pc.equal(la, lb), False).to_numpy(zero_copy_only=False) & ~both_null
        rows = np.flatnonzero(eq)
        if len(rows):
            sa, sb = a.take(pa.array(rows)), b.take(pa.array(rows))
            values_equal = rows_equal(pc.list_flatten(sa), pc.list_flatten(sb))
            parent = pc.list_parent_indices(sa).to_numpy(zero_copy_only=False)
            eq[rows[np.bincount(parent[~values_equal], minlength=len(rows)) > 0]] = False
        return eq | both_null
    if pa.types.is_struct(a.type):
        eq = (a.is_null().to_numpy(zero_copy_only=False) == b.is_null().to_numpy(zero_copy_only=False))
        for i in range(a.type.num_fields):
            eq &= rows_equal(pc.struct_field(a, [i]), pc.struct_field(b, [i]))
        return eq | both_null
    return pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False) | both_null


def _as_list(m: pa.Array) -> pa.Array:
    """A map array as the list<struct<key, value>> it is stored as."""
    entries = pa.StructArray.from_arrays([m.keys, m.items], names=["key", "value"])
    return pa.ListArray.from_arrays(m.offsets, entries, mask=m.is_null())


def previous_images(prev: dict | None) -> list[dict]:
    """A previous products row's images (image_* and more_images, in order) as dicts of
    image_uri, image_version, image_hash, image_shard; none for no row."""
    if prev is None:
        return []
    return [{k: prev[k] for k in IMAGE_REF.names}, *(prev["more_images"] or ())]


class PreviousProducts:
    """The products table before this run, from a local copy read a batch at a time, never
    whole: a chunk's previous rows, the stored images, and whether the new table differs."""

    def __init__(self, path: Path | None):
        self.path = path
        self.num_rows = pq.ParquetFile(path).metadata.num_rows if path is not None else 0

    def batches(self, columns: list[str] | None = None, rows: int = ROW_GROUP_ROWS,
                ids: pa.Array | None = None) -> Iterator[pa.Table]:
        """The table (or these columns), `rows` rows at a time, cast to PRODUCTS; a column an
        older table lacks (PRODUCTS_DEFAULTS) reads as its default. With `ids` (sorted), only
        the row groups whose product id range holds one of them."""
        if self.path is None:
            return
        schema = pa.schema([PRODUCTS.field(c) for c in columns]) if columns else PRODUCTS
        with pq.ParquetFile(self.path) as f:
            groups = None if ids is None else _row_groups_holding(f, ids)
            for batch in f.iter_batches(batch_size=rows, columns=schema.names,  # skips absent ones
                                        row_groups=groups):
                t = pa.Table.from_batches([batch])
                for name, value in PRODUCTS_DEFAULTS.items():
                    if name in schema.names and name not in t.column_names:
                        t = t.append_column(name, pa.array([value] * t.num_rows, schema.field(name).type))
                yield t.select(schema.names).cast(schema)

    def rows_of(self, product_ids: Iterable[str]) -> pa.Table:
        """The previous rows of these products (one pass over the table)."""
        want = pa.array(sorted(set(product_ids)), pa.string())
        hits = [t.filter(pc.is_in(t["product_id"], value_set=want)) for t in self.batches(ids=want)] if len(want) else []
        return pa.concat_tables(hits) if hits else PRODUCTS.empty_table()

    def by_id(self, product_ids: Iterable[str]) -> PreviousRows:
        """rows_of by product id (a chunk's worth), looked up as Python rows in the order of
        `product_ids` (see PreviousRows)."""
        ids = list(product_ids)
        return PreviousRows(self.rows_of(ids), ids)

    def known_images(self) -> KnownImages:
        """Hash -> shard of the images the previous products show (image_* and more_images)."""
        def pairs():
            for t in self.batches(["image_hash", "image_shard", "more_images"]):
                more = pc.list_flatten(t["more_images"])
                yield (_concat([t["image_hash"], pc.struct_field(more, "image_hash")]),
                       _concat([t["image_shard"], pc.struct_field(more, "image_shard")]))
        return KnownImages.of_batches(pairs())

    def same_as(self, path: Path) -> bool:
        """Whether the table at `path` has exactly the previous rows (no previous table: an
        empty one), compared ROW_GROUP_ROWS rows at a time."""
        with pq.ParquetFile(path) as f:
            if f.metadata.num_rows != self.num_rows:
                return False
        new = _rebatched(PreviousProducts(path).batches())
        return all(a.equals(b) for a, b in zip(new, _rebatched(self.batches())))


def _row_groups_holding(f: pq.ParquetFile, ids: pa.Array) -> list[int] | None:
    """The row groups of f whose product id statistics (min, max) take in one of the sorted
    `ids`: a chunk of an export in id order reads its part of the previous table, not all of
    it. None (every group) when a group has no statistics."""
    column = [f.metadata.schema.column(i).path for i in range(f.metadata.num_columns)].index("product_id")
    wanted, groups = ids.to_pylist(), []
    for g in range(f.metadata.num_row_groups):
        stats = f.metadata.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max:
            return None
        k = bisect.bisect_left(wanted, stats.min)
        if k < len(wanted) and wanted[k] <= stats.max:
            groups.append(g)
    return groups


# Rows turned into Python objects at a time, where a chunk's rows are (products_table, PreviousRows).
SLICE_ROWS = 4096


IMAGE_COLUMNS = [*IMAGE_REF.names, "more_images"]  # a previous row's images (previous_images)


class PreviousRows(Mapping[str, dict]):
    """A chunk's previous products rows by product id: `table` (Arrow, in the order the ids
    were asked for, the export's; products_table compares it as Arrow), looked up as dicts of
    their images (IMAGE_COLUMNS, what the change check reads) SLICE_ROWS rows at a time, the
    slice of the row looked up last. Read in that order, every row is converted once a pass.
    As dicts of Python objects the whole chunk's previous rows were ~2.4 KB a row, ~240 MB
    per 100,000-row chunk of a re-ingest."""

    def __init__(self, table: pa.Table, ids: list[str]):
        at = pc.index_in(pa.array(ids, pa.string()), value_set=table["product_id"])
        self.table = table.take(at.drop_null())
        self._at = {pid: k for k, pid in enumerate(itertools.compress(ids, at.is_valid().to_pylist()))}
        self._slice, self._rows = -1, []

    def __getitem__(self, product_id: str) -> dict:
        """The product's previous images (IMAGE_COLUMNS: what previous_images reads), as a dict."""
        k = self._at[product_id]
        s, i = divmod(k, SLICE_ROWS)
        if s != self._slice:
            self._rows = []  # the old slice goes before the next is made
            part = self.table.select(IMAGE_COLUMNS).slice(s * SLICE_ROWS, SLICE_ROWS)
            self._rows, self._slice = part.to_pylist(), s
        return self._rows[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._at


def _rebatched(batches: Iterator[pa.Table], rows: int = ROW_GROUP_ROWS) -> Iterator[pa.Table]:
    """The same rows in tables of exactly `rows` rows (the last one shorter), so that two
    files with other row groups can be compared piece by piece."""
    held, n = [], 0
    for t in batches:
        held.append(t)
        n += t.num_rows
        while n >= rows:
            whole = pa.concat_tables(held).combine_chunks()
            yield whole.slice(0, rows)
            rest = whole.slice(rows)
            held, n = [rest], rest.num_rows
    if n:
        yield pa.concat_tables(held).combine_chunks()


# Rows per row group of a run file, and per batch read from each run while merging. The
# merge holds a reader and a batch of every run at once, and there is a run per export chunk
# (ten for a million products): at ROW_GROUP_ROWS rows that was ~15-25 MB a run, so the merge
# grew with the catalog. Run files are local and temporary; the merged table is written in
# ROW_GROUP_ROWS row groups as before.
RUN_ROWS = 2048


class ProductRuns:
    """The new products table, built a chunk at a time: each chunk's rows go to a sorted
    local run file, and `merged` streams all runs' rows in product id order (RUN_ROWS rows
    of each run in memory; product ids are unique across runs)."""

    def __init__(self, folder: Path):
        self.folder, self.paths = folder, []

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            path = self.folder / f"run-{len(self.paths):05d}.parquet"
            order = pc.sort_indices(table["product_id"])
            with pq.ParquetWriter(path, table.schema, **PARQUET_OPTIONS) as out:
                for start in range(0, len(order), RUN_ROWS):  # a sorted copy of the chunk is never whole
                    out.write_table(table.take(order.slice(start, RUN_ROWS)), row_group_size=RUN_ROWS)
            self.paths.append(path)

    def merged(self) -> Iterator[pa.Table]:
        return merge_sorted([PreviousProducts(p).batches(rows=RUN_ROWS) for p in self.paths])


def merge_sorted(runs: list[Iterator[pa.Table]]) -> Iterator[pa.Table]:
    """Tables sorted by product id, each run's rows in order, merged into one sorted stream:
    every row up to the smallest of the runs' last buffered ids is complete, so it goes out."""
    its, bufs = list(runs), [PRODUCTS.empty_table() for _ in runs]

    def fill(i: int) -> None:
        while not bufs[i].num_rows and its[i] is not None:
            nxt = next(its[i], None)
            if nxt is None:
                its[i] = None
            else:
                bufs[i] = nxt

    for i in range(len(bufs)):
        fill(i)
    while any(b.num_rows for b in bufs):
        cutoff = min(b["product_id"][-1].as_py() for b in bufs if b.num_rows)
        parts = []
        for i, b in enumerate(bufs):
            k = (pc.sum(pc.less_equal(b["product_id"], cutoff)).as_py() or 0) if b.num_rows else 0
            parts.append(b.slice(0, k))
            bufs[i] = b.slice(k)
            fill(i)
        yield pa.concat_tables(parts).sort_by("product_id")


def _concat(arrays: list[pa.Array | pa.ChunkedArray]) -> pa.Array:
    return pa.concat_arrays([c for a in arrays for c in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])])


def _filled(hashes, shards, known):
    """`shards` with every PENDING_SHARD looked up by its hash in `known`; None if none is."""
    pending = pc.equal(shards, PENDING_SHARD)
    if not pc.any(pending).as_py():
        return None
    wanted = pa.array(sorted(set(hashes.filter(pending).to_pylist())), pa.string())
    names = pa.array([known[h] for h in wanted.to_pylist()], pa.string())
    return pc.if_else(pending, pc.take(names, pc.index_in(hashes, value_set=wanted)), shards)


def fill_pending_shards(table: pa.Table, known) -> pa.Table:
    """`table` with every PENDING_SHARD (image_shard, and inside more_images) looked up by
    its image's hash in `known`."""
    shards = _filled(table["image_hash"], table["image_shard"], known)
    if shards is not None:
        table = table.set_column(table.schema.get_field_index("image_shard"), table.schema.field("image_shard"), shards)
    more = _concat([table["more_images"]])
    images = pc.list_flatten(more)  # every product's images, one list after another
    shards = _filled(images.field("image_hash"), images.field("image_shard"), known)
    if shards is None:
        return table
    fields = [shards if f.name == "image_shard" else images.field(f.name) for f in IMAGE_REF]
    lengths = pc.list_value_length(more).fill_null(0).to_pylist()
    filled = pa.ListArray.from_arrays(
        pa.array([0, *itertools.accumulate(lengths)], pa.int32()),
        pa.StructArray.from_arrays(fields, fields=list(IMAGE_REF)),
        type=PRODUCTS.field("more_images").type, mask=more.is_null(),
    )
    return table.set_column(table.schema.get_field_index("more_images"), table.schema.field("more_images"), filled)


def write_products(storage: Storage, local: Path, rows: int, previous: PreviousProducts) -> bool:
    """Upload the new products table unless it equals the previous one; whether it was."""
    if previous.same_as(local):
        return False
    storage.upload(local, PRODUCTS_PATH)
    log.info("wrote %d rows to %s", rows, storage.url(PRODUCTS_PATH))
    return True


def write_taxonomy(storage: Storage, taxonomy: Taxonomy) -> None:
    """The taxonomy the products were labelled with, next to them (rewritten only if it changed)."""
    data = taxonomy.model_dump_json(indent=2).encode()
    if not storage.exists(TAXONOMY_PATH) or storage.read_bytes(TAXONOMY_PATH) != data:
        storage.write_bytes(TAXONOMY_PATH, data)


def write_released(storage: Storage, referenced: set[str], now: datetime) -> None:
    """Note when each shard the products table no longer names was let go (RELEASED_PATH):
    a reader that read an older table may still use it, so `tagger vacuum` deletes it only
    a grace period after this time. A shard named again drops out; rewritten only on change."""
    listed = {p.rsplit("/", 1)[-1] for p in storage.list(IMAGES_PREFIX) if p.endswith(".parquet")}
    old = read_released(storage)
    released = {s: old.get(s, now.isoformat()) for s in sorted(listed - referenced)}
    if released != old:
        storage.write_bytes(RELEASED_PATH, json.dumps(released, indent=1).encode())
