"""The products table of a run: this export's valid rows diffed against the previous
table (new, changed, unchanged, removed), written only when its content changed; and the
lake's copy of the taxonomy."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from catalog_schemas.tables import PRODUCTS
from catalog_schemas.taxonomy import Taxonomy
from tagger.ingest.rows import CatalogRow
from tagger.io.parquet import write_table
from tagger.io.storage import Storage
from tagger.lake import IMAGES_PREFIX, PRODUCTS_PATH, RELEASED_PATH, TAXONOMY_PATH, read_released

# What tags depend on: a product whose image only moved (same content) is not a change.
_CONTENT = ("category", "image_hash", "labels")


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


def _record(row: CatalogRow) -> dict:
    return dict(
        product_id=row.product_id, category=row.category, image_uri=row.image_uri,
        image_version=row.image_version, image_hash=row.image_hash,
        image_shard=row.image_shard or PENDING_SHARD,
        labels=sorted(row.labels.items()),
    )


def _same_content(prev: dict, rec: dict) -> bool:
    return all((sorted(prev[k]) if k == "labels" else prev[k]) == rec[k] for k in _CONTENT)


def products_table(good: Iterable[CatalogRow], previous: dict[str, dict], run_id: str,
                   now: datetime) -> tuple[pa.Table, ProductChanges]:
    """The products table of `good` rows (sorted by id); a product keeps its first_seen,
    and its updated_at and ingest_run_id unless its content changed."""
    records, changes = [], ProductChanges()
    for row in good:
        rec = _record(row)
        prev = previous.get(row.product_id)
        if prev is None:
            changes.new += 1
            rec.update(first_seen=now, updated_at=now, ingest_run_id=run_id)
        elif _same_content(prev, rec):
            changes.unchanged += 1
            rec.update(first_seen=prev["first_seen"], updated_at=prev["updated_at"],
                       ingest_run_id=prev["ingest_run_id"])
        else:
            changes.changed += 1
            rec.update(first_seen=prev["first_seen"], updated_at=now, ingest_run_id=run_id)
        records.append(rec)
    return pa.Table.from_pylist(records, schema=PRODUCTS), changes


def previous_rows(previous: pa.Table, product_ids: list[str]) -> dict[str, dict]:
    """The previous table's rows of these products, by id (a chunk's worth of Python rows)."""
    if not previous.num_rows or not product_ids:
        return {}
    hit = previous.filter(pc.is_in(previous["product_id"], value_set=pa.array(product_ids, pa.string())))
    return {p["product_id"]: p for p in hit.to_pylist()}


def fill_pending_shards(table: pa.Table, known) -> pa.Table:
    """`table` with the shard of every PENDING_SHARD row looked up by its hash in `known`."""
    pending = pc.equal(table["image_shard"], PENDING_SHARD)
    if not pc.any(pending).as_py():
        return table
    hashes = sorted(set(table.filter(pending)["image_hash"].to_pylist()))
    names = pa.array([known[h] for h in hashes], pa.string())
    looked_up = pc.take(names, pc.index_in(table["image_hash"], value_set=pa.array(hashes, pa.string())))
    shards = pc.if_else(pending, looked_up, table["image_shard"])
    return table.set_column(table.schema.get_field_index("image_shard"), table.schema.field("image_shard"), shards)


def keep_previous(table: pa.Table, previous: pa.Table, product_ids: set[str]) -> tuple[pa.Table, int]:
    """`table` plus the previous rows of `product_ids` (those that had one); and how many."""
    if not product_ids or not previous.num_rows:
        return table, 0
    kept = previous.filter(pc.is_in(previous["product_id"], value_set=pa.array(sorted(product_ids), pa.string())))
    if not kept.num_rows:
        return table, 0
    return pa.concat_tables([table, kept.cast(PRODUCTS)]).sort_by("product_id"), kept.num_rows


def write_products(storage: Storage, table: pa.Table, previous: pa.Table) -> bool:
    """Write the products table unless it equals the previous one; whether it was written."""
    if table.equals(previous):
        return False
    write_table(storage, PRODUCTS_PATH, table)
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
