"""Catalog rows -> validated product rows: id, category, labels, image reference and text
checked per row. A bad row is a reject with a reason, never an exception; the first of two
rows with one product id wins."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from catalog_schemas.taxonomy import CatalogMapping, Taxonomy
from tagger.ingest.export import text_columns
from tagger.ingest.rejects import Problem, Rejects
from tagger.ingest.source import ImageSource
from tagger.ingest.text import clean_text, compose_text, undecodable
from tagger.labels import LabelError, parse_labels


@dataclass
class CatalogRow:
    """One valid row of the export and, as the run goes on, what is known of its image."""

    index: int
    product_id: str
    category: str | None
    labels: dict[str, list[str]]
    image_uri: str
    text: str | None = None  # cleaned (tagger.ingest.text); None: the product has none
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


def _row_text(rec: dict, m: CatalogMapping, columns: list[str]) -> tuple[str | None, bool]:
    """The row's cleaned text and whether it was cut (clean_text); a text cell damaged by a
    decoding error rejects the row."""
    for column in columns:
        cell = rec.get(column)
        if isinstance(cell, str) and undecodable(cell):
            raise LabelError(
                "text_encoding",
                f"column {column!r} has text that was not valid UTF-8 (bytes that are not UTF-8, "
                "or U+FFFD where a decoder replaced them): re-export the catalog as UTF-8",
            )
    return clean_text(compose_text(rec, m.text)) if m.text else (None, False)


class RowValidator:
    """Validates an export read in chunks: row numbers count on across chunks, and the
    first of two rows with one product id wins wherever they fall. `texts_truncated`
    counts the valid rows whose text was cut to MAX_TEXT_CHARS."""

    def __init__(self, taxonomy: Taxonomy, source: ImageSource, rejects: Rejects):
        self.taxonomy, self.source, self.rejects = taxonomy, source, rejects
        self.offset = 0
        self.texts_truncated = 0
        self._text_columns = text_columns(taxonomy.catalog)
        # Every valid row of earlier chunks: its product id, row and a digest of its labels,
        # image and text (what a later row with that id is compared with). Arrow and numpy, about 30
        # bytes a product: a dict of Python objects would hold ten times that.
        self._ids = pa.array([], pa.string())
        self._first = np.zeros(0, np.int64)
        self._digest = np.zeros(0, np.int64)

    def _earlier(self, ids: list[str | None]) -> dict[str, tuple[int, int]]:
        """(first row, digest) of the ids that valid rows of earlier chunks had."""
        query = pa.array(sorted({i for i in ids if i is not None}), pa.string())
        if not len(self._ids) or not len(query):
            return {}
        at = pc.index_in(query, value_set=self._ids).to_pylist()
        return {pid: (int(self._first[k]), int(self._digest[k]))
                for pid, k in zip(query.to_pylist(), at) if k is not None}

    def _remember(self, valid: dict[str, tuple[int, int]]) -> None:
        self._ids = pa.concat_arrays([self._ids, pa.array(list(valid), pa.string())])
        self._first = np.concatenate([self._first, np.array([v[0] for v in valid.values()], np.int64)])
        self._digest = np.concatenate([self._digest, np.array([v[1] for v in valid.values()], np.int64)])

    def validate(self, df: pd.DataFrame) -> Iterator[CatalogRow]:
        """The chunk's rows that can be ingested, in catalog order; every other row goes to
        `rejects`. Consume it whole before the next chunk."""
        m, offset = self.taxonomy.catalog, self.offset
        self.offset += len(df)
        records = df.to_dict("records")
        ids = [_text(rec.get(m.id)) for rec in records]
        earlier, valid = self._earlier(ids), {}
        for index, (rec, pid) in enumerate(zip(records, ids), start=offset):
            if pid is None:
                self.rejects.add(index, None, Problem("validate", "missing_id", f"column {m.id!r} is empty"))
                continue
            category = _text(rec.get(m.category)) if m.category else None
            try:
                labels = parse_labels(rec, self.taxonomy, category)
                uri = self.source.resolve(_image_ref(rec, m))
                text, truncated = _row_text(rec, m, self._text_columns)
            except LabelError as e:
                self.rejects.add(index, pid, Problem("validate", e.reason, e.detail))
                continue
            digest = hash((tuple((k, tuple(v)) for k, v in sorted(labels.items())), uri, text))
            seen = valid.get(pid) or earlier.get(pid)
            if seen is not None:
                same = seen[1] == digest
                reason = "duplicate_id" if same else "conflicting_duplicate"
                other = "" if same else " with other labels, image or text"
                self.rejects.add(index, pid, Problem("validate", reason, f"product id also on row {seen[0]}{other}"))
                continue
            valid[pid] = (index, digest)
            self.texts_truncated += truncated
            yield CatalogRow(index, pid, category, labels, uri, text)
        self._remember(valid)


def validate_rows(df: pd.DataFrame, taxonomy: Taxonomy, source: ImageSource,
                  rejects: Rejects) -> Iterator[CatalogRow]:
    """The rows of a whole export that can be ingested (RowValidator over one chunk)."""
    return RowValidator(taxonomy, source, rejects).validate(df)
