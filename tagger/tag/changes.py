"""What changed between two tag snapshots: the figures a tag run reports (TagResult.changes)
and the flows publish, computed with Arrow joins on the tag keys, no Python rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

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
