"""Which products a tag run tags: new, changed since they were last tagged, or all of them.

A product is tagged when it is new, its image or curated labels changed since it was last
tagged (its products row's image_hash or updated_at differs from its TAG_STATE row), or
the model changed; with `full`, every product. The products table and the state table
are read in step, in batches (tagger.tag.streams), so what a plan holds grows with the
products it tags, not with the catalog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog_schemas.tables import TAG_STATE
from tagger.io.storage import Storage, open_storage, read_table, read_table_or_empty
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
    """One pass over the products: those to tag and every product id."""

    todo: pa.Table  # PRODUCT_COLUMNS of the products to tag, catalog order
    ids: pa.Array  # every current product id, sorted
    products: int


def plan_tagging(lake: str, *, model_version: str | None = None, full: bool = False) -> TagPlan:
    """The products that are new or changed since they were tagged (all with `full` or a
    different model), for the given model version (default: the lake's production version)."""
    storage = open_storage(lake)
    version = read_card(storage, resolve_version(storage, model_version)).version
    scan = scan_products(storage, version, full=full)
    return TagPlan(version, scan.todo["product_id"].to_pylist(), scan.products)


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
                  wanted: list[str] | None = None) -> Scan:
    """One pass over the products table, and the state table in step with it (both sorted
    by product id), keeping only the products to tag (select_products, or those in `wanted`)
    and the product ids: what a run holds grows with the products it tags, not with the
    catalog. Tables not sorted by product id are read whole instead."""
    if not storage.exists(PRODUCTS_PATH):
        read_products(storage)  # raises the error that says how to ingest
    wanted_ids = None if wanted is None else pa.array(wanted, pa.string())
    try:
        scan = _scan_streamed(storage, version, full, wanted_ids)
    except Unsorted:
        scan = _scan_whole(storage, version, full, wanted_ids)
    log.info("plan: %d of %d products to tag with model %s", scan.todo.num_rows, scan.products, version)
    return scan


def _scan_streamed(storage: Storage, version: str, full: bool, wanted_ids: pa.Array | None) -> Scan:
    with open_parquet(storage, PRODUCTS_PATH) as pf, open_parquet(storage, STATE_PATH) as sf:
        state = Upto(sorted_batches(sf, TAG_STATE), TAG_STATE)
        parts, ids, n = [], [], 0
        for batch in sorted_batches(pf, PRODUCT_SCHEMA):
            n += batch.num_rows
            ids.append(batch["product_id"].combine_chunks())
            if wanted_ids is not None:
                parts.append(batch.filter(pc.is_in(batch["product_id"], value_set=wanted_ids)))
            else:
                seen = TAG_STATE.empty_table() if full else state.upto(batch["product_id"][-1].as_py())
                parts.append(batch.take(select_products(batch, seen, version, full)))
    todo = pa.concat_tables(parts) if parts else PRODUCT_SCHEMA.empty_table()
    all_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    return Scan(todo, all_ids, n)


def _scan_whole(storage: Storage, version: str, full: bool, wanted_ids: pa.Array | None) -> Scan:
    products = read_tag_products(storage)
    if wanted_ids is not None:
        todo = products.filter(pc.is_in(products["product_id"], value_set=wanted_ids))
    else:
        state = read_table_or_empty(storage, STATE_PATH, TAG_STATE)
        todo = products.take(select_products(products, state, version, full))
    return Scan(todo, sorted_unique(products["product_id"]), products.num_rows)
