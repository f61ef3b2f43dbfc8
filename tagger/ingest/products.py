"""The products table of a run: this export's valid rows diffed against the previous
table (new, changed, unchanged, removed), written only when its content changed; and the
lake's copy of the taxonomy."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from catalog_schemas.tables import PRODUCTS
from catalog_schemas.taxonomy import Taxonomy
from tagger.ingest.rows import CatalogRow
from tagger.io.parquet import write_table
from tagger.io.storage import Storage
from tagger.lake import IMAGES_PREFIX, PRODUCTS_PATH, RELEASED_PATH, TAXONOMY_PATH, read_released

# What tags depend on: a product whose image only moved (same content) is not a change.
_CONTENT = ("category", "image_hash", "labels")


@dataclass
class ProductChanges:
    """How this run's products compare with the previous table."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0


def _record(row: CatalogRow) -> dict:
    return dict(
        product_id=row.product_id, category=row.category, image_uri=row.image_uri,
        image_version=row.image_version, image_hash=row.image_hash, image_shard=row.image_shard,
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


def keep_previous(table: pa.Table, previous: dict[str, dict], product_ids: set[str]) -> tuple[pa.Table, int]:
    """`table` plus the previous rows of `product_ids` (those that had one); and how many."""
    kept = [previous[p] for p in sorted(product_ids & previous.keys())]
    if not kept:
        return table, 0
    both = pa.concat_tables([table, pa.Table.from_pylist(kept, schema=PRODUCTS)])
    return both.sort_by("product_id"), len(kept)


def write_products(storage: Storage, table: pa.Table, previous: Sequence[dict]) -> bool:
    """Write the products table unless it equals the previous one; whether it was written."""
    if table.equals(pa.Table.from_pylist(list(previous), schema=PRODUCTS)):
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
