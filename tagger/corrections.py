"""Reviewers' corrections: curated labels that win like the catalog export's own.

`catalog/corrections/corrections.parquet` (CORRECTIONS) holds one row per product and
attribute: the latest decision a reviewer made in the review tool (tagger.review.pull
writes it). Training learns from them and a tag run emits them as `source='reviewed'`
rows that no prediction replaces.

What wins when the export's own label and a correction disagree: the newer statement. A
correction overrides the label its reviewer saw, so it wins over the product row as long
as that row has not changed since (`reviewed_at >= updated_at`); an export that changes the
product's labels or image after the review (a fix at the source, or a new photo the reviewer
never saw) wins over it, until someone reviews the product again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from catalog_schemas.tables import CORRECTIONS
from tagger.io.storage import Storage, read_table_or_empty, write_table
from tagger.lake import CORRECTIONS_PATH

KEY = ["product_id", "attribute"]


@dataclass(frozen=True)
class Correction:
    values: tuple[str, ...]
    reviewed_at: datetime


@dataclass
class Corrections:
    """The corrections table by product: {product_id: {attribute: Correction}}."""

    by_product: dict[str, dict[str, Correction]] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: pa.Table) -> Corrections:
        out: dict[str, dict[str, Correction]] = {}
        cols = table.select(["product_id", "attribute", "values", "reviewed_at"]).to_pydict()
        for pid, attr, values, at in zip(cols["product_id"], cols["attribute"], cols["values"],
                                         cols["reviewed_at"]):
            out.setdefault(pid, {})[attr] = Correction(tuple(values), at)
        return cls(out)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_product.values())

    def apply(self, product_id: str, labels: Mapping[str, list[str]] | Iterable,
              updated_at: datetime) -> tuple[dict[str, list[str]], set[str]]:
        """(labels with the product's winning corrections in, attributes they decided)."""
        return apply_corrections(dict(labels), updated_at, self.by_product.get(product_id, {}))


def apply_corrections(labels: dict[str, list[str]], updated_at: datetime,
                      corrections: Mapping[str, Correction]) -> tuple[dict[str, list[str]], set[str]]:
    """The module docstring's rule for one product: each correction made at or after the
    row's last change replaces the attribute's label; older ones lose to the export."""
    out, reviewed = dict(labels), set()
    for attribute, c in corrections.items():
        if c.reviewed_at >= updated_at:
            out[attribute] = list(c.values)
            reviewed.add(attribute)
    return out, reviewed


def read_corrections(storage: Storage) -> pa.Table:
    """The corrections table (empty before the first review pull)."""
    return read_table_or_empty(storage, CORRECTIONS_PATH, CORRECTIONS)


def load_corrections(storage: Storage) -> Corrections:
    return Corrections.from_table(read_corrections(storage))


def merge_corrections(previous: pa.Table, new: pa.Table) -> pa.Table:
    """One row per (product, attribute): the later `reviewed_at` wins, `previous` on a tie (a
    pull of the same decisions again leaves the table as it was). Sorted by product, attribute."""
    # Among equal times the row of `previous` must come first: Arrow's sort is stable.
    both = pa.concat_tables([previous.cast(CORRECTIONS), new.cast(CORRECTIONS)])
    order = pc.sort_indices(both, sort_keys=[("product_id", "ascending"), ("attribute", "ascending"),
                                             ("reviewed_at", "descending")])
    ranked = both.take(order)
    pid, attr = ranked["product_id"].to_pylist(), ranked["attribute"].to_pylist()
    first = [i for i in range(len(pid)) if i == 0 or (pid[i], attr[i]) != (pid[i - 1], attr[i - 1])]
    return ranked.take(pa.array(first, pa.int64())).replace_schema_metadata(CORRECTIONS.metadata)


def write_corrections(storage: Storage, table: pa.Table) -> None:
    write_table(storage, CORRECTIONS_PATH, table.cast(CORRECTIONS))
