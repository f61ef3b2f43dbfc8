"""Which products a tag run tags: new, changed since they were last tagged, or all of them.

A product is tagged when it is new, its image or curated labels changed since it was last
tagged (its products row's image_hash or updated_at differs from its TAG_STATE row), or
the model changed; with `full`, every product. The products table and the state table
are read in step, in batches (tagger.tag.streams), so what a plan holds grows with the
products it tags, not with the catalog.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog_schemas.tables import TAG_STATE
from tagger.io.storage import RowGroupWriter, Storage, open_storage, read_table, read_table_or_empty
from tagger.lake import PRODUCTS_DEFAULTS, PRODUCTS_PATH, STATE_PATH, read_products
from tagger.model.production import resolve_version
from tagger.model.versions import read_card
from tagger.tag.rows import PRODUCT_SCHEMA
from tagger.tag.streams import Unsorted, Upto, open_parquet, sorted_batches, sorted_unique

log = logging.getLogger(__name__)


@dataclass
class TagPlan:
    """What a tag run will do: the model version and the products to tag (catalog order).
    Shards of `product_ids` can be scored anywhere (score_products); write_tags commits."""

    model_version: str
    product_ids: list[str]
    products: int


@dataclass
class Scan:
    """One pass over the products: those to tag and every product id.

    The products to tag are `todo` (in memory) or, for a scan told to spill, a local Parquet
    file in product id order that `batches` reads back a part at a time: a full run tags every
    product, and its rows (labels, text, images) would grow with the catalog."""

    todo: pa.Table | None  # PRODUCT_COLUMNS of the products to tag, catalog order; None: spilled
    ids: pa.Array  # every current product id, sorted
    products: int
    tagged_ids: pa.Array  # the product ids to tag, sorted
    todo_path: Path | None = None

    @property
    def tagged(self) -> int:
        return len(self.tagged_ids)

    def batches(self, rows: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The products to tag, `rows` at a time, in product id order (`columns` of them)."""
        if self.todo_path is None:
            todo = in_product_order(self.todo)
            for start in range(0, todo.num_rows, rows):
                part = todo.slice(start, rows)
                yield part if columns is None else part.select(columns)
            return
        with pq.ParquetFile(self.todo_path) as f:
            for batch in f.iter_batches(batch_size=rows, columns=columns):
                yield pa.Table.from_batches([batch])


def in_product_order(products: pa.Table) -> pa.Table:
    """`products` sorted by product id (it usually is already: the table is written so)."""
    ids = products["product_id"]
    if len(ids) < 2 or pc.all(pc.less_equal(ids[:-1], ids[1:])).as_py():
        return products
    return products.sort_by("product_id")


def plan_tagging(lake: str, *, model_version: str | None = None, full: bool = False) -> TagPlan:
    """The products that are new or changed since they were tagged (all with `full` or a
    different model), for the given model version (default: the lake's production version)."""
    storage = open_storage(lake)
    version = read_card(storage, resolve_version(storage, model_version)).version
    scan = scan_products(storage, version, full=full)
    return TagPlan(version, scan.todo["product_id"].to_pylist(), scan.products)  # not spilled: in memory


def select_products(products: pa.Table, state: pa.Table, model_version: str, full: bool) -> np.ndarray:
    """Indices of products to tag: new, changed image or labels, or a different model
    (Arrow compute on the tables; `state` has the TAG_STATE columns)."""
    if full or state.num_rows == 0:
        return np.arange(products.num_rows)
    at = pc.index_in(products["product_id"], value_set=state["product_id"])
    s = state.select(["image_hash", "product_updated_at", "model_version"]).take(at)  # null: new
    same = pc.and_(pc.and_(pc.equal(s["model_version"], model_version),
                           pc.equal(s["image_hash"], products["image_hash"])),
                   pc.equal(s["product_updated_at"], products["updated_at"]))
    return np.flatnonzero(~pc.fill_null(same, False).to_numpy(zero_copy_only=False))


def read_tag_products(storage: Storage) -> pa.Table:
    """The products table, only PRODUCT_COLUMNS (catalog order: by product id)."""
    if not storage.exists(PRODUCTS_PATH):
        read_products(storage)  # raises the error that says how to ingest
    # Through the lake's reader: a damaged table names the file and the remedy.
    return read_table(storage, PRODUCTS_PATH, PRODUCT_SCHEMA, defaults=PRODUCTS_DEFAULTS)


def scan_products(storage: Storage, version: str, *, full: bool = False,
                  wanted: list[str] | None = None, spill: Path | None = None) -> Scan:
    """One pass over the products table, and the state table in step with it (both sorted
    by product id), keeping only the products to tag (select_products, or those in `wanted`)
    and the product ids: what a run holds grows with the products it tags, not with the
    catalog. With `spill` (a local folder) the products to tag are written there instead of
    held (Scan.batches reads them back), so a full run holds their ids only. Tables not
    sorted by product id are read whole instead."""
    if not storage.exists(PRODUCTS_PATH):
        read_products(storage)  # raises the error that says how to ingest
    wanted_ids = None if wanted is None else pa.array(wanted, pa.string())
    sink = _Todo(spill)
    try:
        scan = _scan_streamed(storage, version, full, wanted_ids, sink)
    except Unsorted:
        sink.discard()  # start again: the streamed pass may have written some parts
        sink = _Todo(spill)
        scan = _scan_whole(storage, version, full, wanted_ids, sink)
    log.info("plan: %d of %d products to tag with model %s", scan.tagged, scan.products, version)
    return scan


class _Todo:
    """Where a scan puts the products to tag: a list of parts, or a local file (spill)."""

    def __init__(self, spill: Path | None):
        self.path = None if spill is None else Path(spill) / "todo.parquet"
        self._writer = None if self.path is None else RowGroupWriter(self.path, PRODUCT_SCHEMA)
        self._parts: list[pa.Table] = []
        self._ids: list[pa.Array] = []

    def add(self, part: pa.Table) -> None:
        self._ids.append(part["product_id"].combine_chunks())
        if self._writer is None:
            self._parts.append(part)
        else:
            self._writer.write(part)

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.path.unlink()

    def scan(self, ids: pa.Array, products: int) -> Scan:
        # streamed parts come in product order: sorted_unique then returns them as they are
        tagged = sorted_unique(pa.concat_arrays(self._ids) if self._ids else pa.array([], pa.string()))
        if len(tagged) == len(ids):
            tagged = ids  # every product (a full run): one array, not two
        if self._writer is None:
            todo = pa.concat_tables(self._parts) if self._parts else PRODUCT_SCHEMA.empty_table()
            return Scan(todo, ids, products, tagged)
        self._writer.close()
        return Scan(None, ids, products, tagged, todo_path=self.path)


def _scan_streamed(storage: Storage, version: str, full: bool, wanted_ids: pa.Array | None,
                   sink: _Todo) -> Scan:
    with open_parquet(storage, PRODUCTS_PATH) as pf, open_parquet(storage, STATE_PATH) as sf:
        state = Upto(sorted_batches(sf, TAG_STATE), TAG_STATE)
        ids, n = [], 0
        for batch in sorted_batches(pf, PRODUCT_SCHEMA):
            n += batch.num_rows
            ids.append(batch["product_id"].combine_chunks())
            if wanted_ids is not None:
                sink.add(batch.filter(pc.is_in(batch["product_id"], value_set=wanted_ids)))
            else:
                seen = TAG_STATE.empty_table() if full else state.upto(batch["product_id"][-1].as_py())
                sink.add(batch.take(select_products(batch, seen, version, full)))
    all_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    return sink.scan(all_ids, n)


def _scan_whole(storage: Storage, version: str, full: bool, wanted_ids: pa.Array | None,
                sink: _Todo) -> Scan:
    products = read_tag_products(storage)
    if wanted_ids is not None:
        todo = products.filter(pc.is_in(products["product_id"], value_set=wanted_ids))
    else:
        state = read_table_or_empty(storage, STATE_PATH, TAG_STATE)
        todo = products.take(select_products(products, state, version, full))
    sink.add(todo if sink.path is None else in_product_order(todo))  # a spilled todo is read back in order
    return sink.scan(sorted_unique(products["product_id"]), products.num_rows)
