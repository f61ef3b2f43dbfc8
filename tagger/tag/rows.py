"""Scores -> tag rows: what a tag run emits for each product, and the run's history table.

Curated labels always win: for an attribute the catalog labels, the rows are the curated
values (source='curated'), never predictions; a reviewer's correction is a curated label too
(source='reviewed', tagger.corrections). Elsewhere the rows are the model's decisions
for the attributes that apply to the product's category. Rows are plain column lists while
a run scores (they travel between processes in a sharded run) and become one table, in
TAG_ORDER whatever the sharding, when the run commits.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import numpy as np
import pyarrow as pa

from catalog_schemas.tables import PRODUCTS, TAG_HISTORY
from catalog_schemas.taxonomy import Taxonomy
from tagger.labels import applicable_mask, encode_labels, single_slices
from tagger.quality.thresholds import compute_decisions, review_flags

# The products columns a tag run uses. A run streams the products table (scan_products) and
# keeps only the rows it tags as an Arrow table; only a scoring chunk becomes Python rows
# (TagConfig.chunk_size).
PRODUCT_COLUMNS = ["product_id", "category", "image_hash", "image_shard", "labels", "updated_at", "text",
                   "more_images"]
PRODUCT_SCHEMA = pa.schema([PRODUCTS.field(c) for c in PRODUCT_COLUMNS])

ROW_COLUMNS = TAG_HISTORY.names[:TAG_HISTORY.names.index("needs_review") + 1]  # from scoring
TAG_ORDER = [("product_id", "ascending"), ("attribute", "ascending"), ("value", "ascending")]

Rows = dict[str, list]  # ROW_COLUMNS -> one list per column


def compute_tag_rows(taxonomy: Taxonomy, products: list[dict], scores: np.ndarray,
                     thresholds: np.ndarray, auto_thresholds: np.ndarray | None = None, *,
                     argmax_slices: Collection[slice] = ()) -> Rows:
    """Column lists (ROW_COLUMNS) of tag rows: curated values where the catalog labels an
    attribute, else the model's decisions for attributes that apply to the product's
    category; a decision below its auto-publish threshold needs review. `argmax_slices`: a
    softmax card's (CardArrays.softmax_slices), decided as their argmax value or none. A
    product's optional `reviewed` (attribute names) marks its labels that are corrections."""
    categories = [p["category"] for p in products]
    targets, curated = encode_labels(taxonomy, [dict(p["labels"]) for p in products], categories)
    reviewed = np.zeros_like(curated)
    for r, p in enumerate(products):
        for attribute in p.get("reviewed", ()):
            if attribute in taxonomy.slices:
                reviewed[r, taxonomy.slices[attribute]] = True
    decisions = compute_decisions(scores, thresholds, list(single_slices(taxonomy).values()),
                                  argmax_slices=argmax_slices)
    predicted = decisions & applicable_mask(taxonomy, categories) & ~curated
    emitted = predicted | (curated & (targets > 0))
    rows, cols = np.nonzero(emitted)
    outputs = taxonomy.outputs
    from_model = predicted[rows, cols]
    review = review_flags(scores, predicted, auto_thresholds)[rows, cols]
    return dict(
        product_id=[products[r]["product_id"] for r in rows],
        attribute=[outputs[c][0] for c in cols],
        value=[outputs[c][1] for c in cols],
        score=[float(scores[r, c]) if m else None for r, c, m in zip(rows, cols, from_model)],
        source=["model" if m else "reviewed" if reviewed[r, c] else "curated"
                for r, c, m in zip(rows, cols, from_model)],
        image_hash=[products[r]["image_hash"] for r in rows],
        needs_review=review.tolist(),
    )


def rows_table(chunks: list[Rows], model_version: str, run_id: str, now: datetime,
               meta: dict[str, str]) -> pa.Table:
    """The rows of every scoring chunk as one TAG_HISTORY table, stamped with the run."""
    cols = {k: [v for c in chunks for v in c[k]] for k in ROW_COLUMNS}
    n = len(cols["product_id"])
    cols.update(model_version=[model_version] * n, run_id=[run_id] * n, tagged_at=[now] * n)
    table = pa.table({name: cols[name] for name in TAG_HISTORY.names}, schema=TAG_HISTORY)
    # Rows in one order whatever the sharding: product, attribute, value.
    return table.sort_by(TAG_ORDER).replace_schema_metadata({**TAG_HISTORY.metadata, **meta})
