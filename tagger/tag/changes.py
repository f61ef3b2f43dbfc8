"""What changed between two tag snapshots: the figures a tag run reports (TagResult.changes)
and the flows publish, computed with Arrow joins on the tag keys, no Python rows; a run
compares its files a product range at a time (compute_tag_changes_of_files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tagger.tag.streams import Unsorted, Upto, bisect_ids, sorted_batches

KEYS = ["product_id", "attribute", "value"]  # a tag; scores are not part of it


def _distinct_tags(t: pa.Table) -> pa.Table:
    t = pa.table({k: t[k].cast(pa.string()) for k in KEYS})
    return t.group_by(KEYS, use_threads=False).aggregate([])


def _distinct(t: pa.Table, keys: list[str]) -> pa.Table:
    return t.select(keys).group_by(keys, use_threads=False).aggregate([])


def compute_tag_changes(previous: pa.Table, latest: pa.Table) -> dict:
    """What changed between two tag snapshots. A tag is (product_id, attribute, value);
    `changed` counts (product, attribute) pairs whose values differ on both sides (e.g.
    colour red -> blue), `products_changed` the products with any added or removed tag.
    Scores are not compared: a tag that stays is no change. Arrow joins, no Python rows."""
    old, new = _distinct_tags(previous), _distinct_tags(latest)
    added = new.join(old, KEYS, join_type="left anti", use_threads=False)
    removed = old.join(new, KEYS, join_type="left anti", use_threads=False)
    pairs = ["product_id", "attribute"]
    changed = _distinct(added, pairs).join(_distinct(removed, pairs), pairs, join_type="inner",
                                           use_threads=False)
    products = pa.concat_arrays([added["product_id"].combine_chunks(),
                                 removed["product_id"].combine_chunks()])
    per_attribute: dict[str, dict[str, int]] = {}
    for kind, t in (("added", added), ("removed", removed)):
        for vc in pc.value_counts(t["attribute"]).to_pylist():
            counts = per_attribute.setdefault(vc["values"], {"added": 0, "removed": 0})
            counts[kind] += vc["counts"]
    return dict(added=added.num_rows, removed=removed.num_rows, changed=changed.num_rows,
                products_changed=pc.count_distinct(products).as_py(),
                per_attribute=dict(sorted(per_attribute.items())))


KEY_SCHEMA = pa.schema([(k, pa.string()) for k in KEYS])


def compute_tag_changes_of_files(previous: Path, latest: Path) -> dict:
    """compute_tag_changes of two local Parquet files sorted by product id (a run's
    previous rows of the products it touched, and its new rows), one product range at a
    time: every figure adds up over disjoint ranges of products, so nothing holds a whole
    table. Files not sorted by product id are compared whole."""
    try:
        return _changes_streamed(previous, latest)
    except Unsorted:
        return compute_tag_changes(pq.read_table(previous, columns=KEYS), pq.read_table(latest, columns=KEYS))


def _changes_streamed(previous: Path, latest: Path) -> dict:
    total = compute_tag_changes(KEY_SCHEMA.empty_table(), KEY_SCHEMA.empty_table())
    with pq.ParquetFile(previous) as pf, pq.ParquetFile(latest) as lf:
        old = Upto(sorted_batches(pf, KEY_SCHEMA), KEY_SCHEMA)
        for part in whole_products(sorted_batches(lf, KEY_SCHEMA)):
            _add_changes(total, compute_tag_changes(old.upto(part["product_id"][-1].as_py()), part))
        for part in whole_products(old.drain()):  # removed products past the last new row
            _add_changes(total, compute_tag_changes(part, KEY_SCHEMA.empty_table()))
    return total


def whole_products(batches: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """Sorted batches regrouped so that no product's rows are split between two."""
    carry = None
    for batch in batches:
        held = batch if carry is None else pa.concat_tables([carry, batch])
        k = bisect_ids(held["product_id"], held["product_id"][-1].as_py(), right=False)
        if k:
            yield held.slice(0, k)
        carry = held.slice(k)
    if carry is not None and carry.num_rows:
        yield carry


def _add_changes(total: dict, part: dict) -> None:
    for key in ("added", "removed", "changed", "products_changed"):
        total[key] += part[key]
    for attribute, counts in part["per_attribute"].items():
        mine = total["per_attribute"].setdefault(attribute, {"added": 0, "removed": 0})
        mine["added"] += counts["added"]
        mine["removed"] += counts["removed"]
    total["per_attribute"] = dict(sorted(total["per_attribute"].items()))
