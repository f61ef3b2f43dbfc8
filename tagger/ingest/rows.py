"""Catalog rows -> validated product rows: id, category, labels, image references and text
checked per row. A bad row is a reject with a reason, never an exception; the first of two
rows with one product id wins."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

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


@dataclass(slots=True)  # a chunk holds one per row and image: no __dict__ each (~40% of one)
class CatalogRow:
    """One valid row of the export and, as the run goes on, what is known of its images:
    the first in image_* here, each other one in `more` as a row of that image alone (same
    index and product id), so the code that fetches and stores an image handles every one."""

    index: int
    product_id: str
    category: str | None
    labels: dict[str, list[str]]
    image_uri: str
    text: str | None = None  # cleaned (tagger.ingest.text); None: the product has none
    digest: int | None = None  # of its export cells, kept when a re-ingest may reuse the row (tagger.ingest.unchanged)
    image_version: str | None = None
    image_hash: str | None = None
    image_shard: str | None = None
    stored: tuple[bytes, int, int] | None = None  # normalised image waiting for a shard
    problem: Problem | None = None  # why this image cannot be ingested; None: fine so far
    more: list[CatalogRow] = field(default_factory=list)  # the other images, in mapping order

    def images(self) -> list[CatalogRow]:
        """This row's image and its other ones, in mapping order."""
        return [self, *self.more]

    def take_image(self, other: CatalogRow) -> None:
        """Show `other`'s image (one of `more`) as this row's own."""
        self.image_uri, self.image_version = other.image_uri, other.image_version
        self.image_hash, self.image_shard, self.problem = other.image_hash, other.image_shard, other.problem


def _text(value: object) -> str | None:
    """A cell as stripped text; None when empty."""
    return None if value is None else str(value).strip() or None


def _image_refs(rec: dict, m: CatalogMapping) -> list[str]:
    """The row's image references in mapping order, stripped, empty ones left out: one per
    `{column}` template; per column, its cell, each element of a list cell (JSON Lines,
    Parquet; pandas hands those as lists or arrays), or each part of a text cell split by
    `image_separator`. A LabelError when there is none."""
    refs = []
    for entry in m.images:
        if "{" in entry:
            cells = [entry.format_map({k: "" if v is None else v for k, v in rec.items()})]
        else:
            cell = rec.get(entry)
            if isinstance(cell, (list, tuple, np.ndarray)):
                cells = list(cell)
            elif isinstance(cell, str) and m.image_separator:
                cells = cell.split(m.image_separator)
            else:
                cells = [cell]
        refs += [str(c).strip() for c in cells if c is not None and str(c).strip()]
    if not refs:
        where = f"column {m.image!r} is" if isinstance(m.image, str) else f"columns {list(m.images)} are"
        raise LabelError("missing_image", f"{where} empty")
    return refs


def _row_images(refs: list[str], source: ImageSource) -> tuple[list[tuple[str, Problem | None]], bool]:
    """Each reference resolved, each URI once (the first): (URI, None), or (the reference,
    its problem) when it cannot be resolved; and whether every one resolved without a link
    (ImageSource.resolve_plainly). A LabelError when none can be resolved."""
    images: dict[str, Problem | None] = {}
    plain = True
    for ref in refs:
        try:
            uri, plainly = source.resolve_plainly(ref)
            images.setdefault(uri, None)
            plain &= plainly
        except LabelError as e:
            images.setdefault(ref, Problem("validate", e.reason, e.detail))
    found = list(images.items())
    if all(problem is not None for _, problem in found):
        first = found[0][1].others_failed(len(found) - 1)
        raise LabelError(first.reason, first.detail)
    return found, plain


def content_digest(labels: Iterable[tuple[str, Sequence[str]]], uris: Sequence[str], text: str | None) -> int:
    """What two rows of one product id are compared by: equal labels, images and text make
    the later one a duplicate, other ones a conflicting duplicate (in this process only:
    Python's string hash is seeded per process)."""
    return hash((tuple((k, tuple(v)) for k, v in sorted(labels)), tuple(uris), text))


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


# Rows of a chunk turned into dicts at a time: a whole chunk's (~1 KB a row) would be held
# next to its CatalogRows.
RECORD_ROWS = 4096


def _records(df: pd.DataFrame) -> Iterator[dict]:
    """The frame's rows as dicts (column -> cell), RECORD_ROWS at a time."""
    for start in range(0, len(df), RECORD_ROWS):
        yield from df.iloc[start:start + RECORD_ROWS].to_dict("records")


class RowValidator:
    """Validates an export read in chunks: row numbers count on across chunks, and the
    first of two rows with one product id wins wherever they fall. `texts_truncated`
    counts the valid rows whose text was cut to MAX_TEXT_CHARS.

    A re-ingest may take some rows as they were, unvalidated (`validate(..., taken=)`,
    tagger.ingest.unchanged); their ids are remembered like any valid row's, and a later row
    with one of them is compared with the content `digest_of_taken(product_id)` gives."""

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
        self._taken = np.zeros(0, bool)  # taken as they were: the digest is looked up when needed
        self.digest_of_taken: Callable[[str], int] | None = None

    def ids(self, df: pd.DataFrame) -> list[str | None]:
        """The rows' product ids as validated (stripped; None for an empty one)."""
        m = self.taxonomy.catalog
        return [_text(v) for v in df[m.id]] if m.id in df.columns else [None] * len(df)

    def seen_before(self, ids: list[str | None]) -> np.ndarray:
        """Per id, whether a valid (or taken) row of an earlier chunk had it."""
        if not len(self._ids):
            return np.zeros(len(ids), bool)
        found = pc.is_in(pa.array(ids, pa.string()), value_set=self._ids)
        return found.to_numpy(zero_copy_only=False)

    def _earlier(self, ids: list[str | None]) -> dict[str, tuple[int, int | None]]:
        """(first row, digest; None for a taken row) of the ids that rows of earlier chunks had."""
        query = pa.array(sorted({i for i in ids if i is not None}), pa.string())
        if not len(self._ids) or not len(query):
            return {}
        at = pc.index_in(query, value_set=self._ids).to_pylist()
        return {pid: (int(self._first[k]), None if self._taken[k] else int(self._digest[k]))
                for pid, k in zip(query.to_pylist(), at) if k is not None}

    def _remember(self, valid: dict[str, tuple[int, int | None]]) -> None:
        self._ids = pa.concat_arrays([self._ids, pa.array(list(valid), pa.string())])
        self._first = np.concatenate([self._first, np.array([v[0] for v in valid.values()], np.int64)])
        self._digest = np.concatenate([self._digest, np.array([v[1] or 0 for v in valid.values()], np.int64)])
        self._taken = np.concatenate([self._taken, np.array([v[1] is None for v in valid.values()], bool)])

    def validate(self, df: pd.DataFrame, *, ids: list[str | None] | None = None,
                 taken: np.ndarray | None = None, digests: np.ndarray | None = None) -> Iterator[CatalogRow]:
        """The chunk's rows that can be ingested, in catalog order; every other row goes to
        `rejects`. Consume it whole before the next chunk. `ids`: self.ids(df), if known;
        `taken`: the rows taken as they were (ids unique in the chunk and new to it), which
        are not validated; `digests`: each row's export digest (tagger.ingest.unchanged),
        kept on the rows a later run may take (CatalogRow.digest)."""
        m, offset = self.taxonomy.catalog, self.offset
        self.offset += len(df)
        ids = self.ids(df) if ids is None else ids
        earlier, valid = self._earlier(ids), {}
        rest = np.arange(len(df))
        if taken is not None and taken.any():
            valid.update((ids[k], (offset + int(k), None)) for k in np.flatnonzero(taken))
            rest = np.flatnonzero(~taken)
            df = df.iloc[rest]
        for k, rec in zip(rest.tolist(), _records(df)):
            index, pid = offset + k, ids[k]
            if pid is None:
                self.rejects.add(index, None, Problem("validate", "missing_id", f"column {m.id!r} is empty"))
                continue
            category = _text(rec.get(m.category)) if m.category else None
            try:
                labels = parse_labels(rec, self.taxonomy, category)
                images, plain = _row_images(_image_refs(rec, m), self.source)
                text, truncated = _row_text(rec, m, self._text_columns)
            except LabelError as e:
                self.rejects.add(index, pid, Problem("validate", e.reason, e.detail))
                continue
            uris = tuple(uri for uri, _ in images)
            digest = content_digest(labels.items(), uris, text)
            seen = valid.get(pid) or earlier.get(pid)
            if seen is not None:
                same = (seen[1] if seen[1] is not None else self.digest_of_taken(pid)) == digest
                reason = "duplicate_id" if same else "conflicting_duplicate"
                other = "" if same else " with other labels, image or text"
                self.rejects.add(index, pid, Problem("validate", reason, f"product id also on row {seen[0]}{other}"))
                continue
            valid[pid] = (index, digest)
            self.texts_truncated += truncated
            (uri, problem), *more = images
            # a cut text is counted again each run, a link is resolved again: neither row is taken
            keep = digests is not None and plain and not truncated
            yield CatalogRow(index, pid, category, labels, uri, text, problem=problem,
                             digest=int(digests[k]) if keep else None,
                             more=[CatalogRow(index, pid, None, {}, u, problem=p) for u, p in more])
        self._remember(valid)


def validate_rows(df: pd.DataFrame, taxonomy: Taxonomy, source: ImageSource,
                  rejects: Rejects) -> Iterator[CatalogRow]:
    """The rows of a whole export that can be ingested (RowValidator over one chunk)."""
    return RowValidator(taxonomy, source, rejects).validate(df)
