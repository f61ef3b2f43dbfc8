"""Catalog rows -> validated product rows: id, category, labels and image reference checked
per row. A bad row is a reject with a reason, never an exception; the first of two rows
with one product id wins."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

from catalog_schemas.taxonomy import CatalogMapping, Taxonomy
from tagger.ingest.rejects import Problem, Rejects
from tagger.ingest.source import ImageSource
from tagger.labels import LabelError, parse_labels


@dataclass
class CatalogRow:
    """One valid row of the export and, as the run goes on, what is known of its image."""

    index: int
    product_id: str
    category: str | None
    labels: dict[str, list[str]]
    image_uri: str
    image_version: str | None = None
    image_hash: str | None = None
    image_shard: str | None = None
    stored: tuple[bytes, int, int] | None = None  # normalised image waiting for a shard


def _text(value: object) -> str | None:
    """A cell as stripped text; None when empty."""
    return None if value is None else str(value).strip() or None


def _image_ref(rec: dict, m: CatalogMapping) -> str:
    """The row's image reference: a column, or a `{column}` template filled from the row."""
    if "{" in m.image:
        ref = m.image.format_map({k: "" if v is None else v for k, v in rec.items()})
    else:
        ref = rec.get(m.image)
    if ref is None or not str(ref).strip():
        raise LabelError("missing_image", f"column {m.image!r} is empty")
    return str(ref)


def validate_rows(df: pd.DataFrame, taxonomy: Taxonomy, source: ImageSource,
                  rejects: Rejects) -> Iterator[CatalogRow]:
    """The rows that can be ingested, in catalog order; every other row goes to `rejects`."""
    m = taxonomy.catalog
    seen: dict[str, tuple[int, dict, str]] = {}
    for index, rec in enumerate(df.to_dict("records")):
        pid = _text(rec.get(m.id))
        if pid is None:
            rejects.add(index, None, Problem("validate", "missing_id", f"column {m.id!r} is empty"))
            continue
        category = _text(rec.get(m.category)) if m.category else None
        try:
            labels = parse_labels(rec, taxonomy, category)
            uri = source.resolve(_image_ref(rec, m))
        except LabelError as e:
            rejects.add(index, pid, Problem("validate", e.reason, e.detail))
            continue
        if pid in seen:
            first, first_labels, first_uri = seen[pid]
            same = first_labels == labels and first_uri == uri
            reason = "duplicate_id" if same else "conflicting_duplicate"
            rejects.add(index, pid, Problem(
                "validate", reason,
                f"product id also on row {first}" + ("" if same else " with other labels or image")))
            continue
        seen[pid] = (index, labels, uri)
        yield CatalogRow(index, pid, category, labels, uri)
