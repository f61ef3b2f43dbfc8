"""The catalog export: read it a chunk of rows at a time (CSV / TSV / JSON Lines / Parquet,
local or S3) and check that it has the columns the taxonomy needs. Problems with the export
as a whole are a CatalogError: raised before anything is written when the first chunk shows
them, and before anything is committed when a later one does."""

from __future__ import annotations

import difflib
import gzip
import itertools
import json
import logging
import re
import string
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from catalog_schemas.taxonomy import CatalogMapping, Taxonomy
from tagger.io.storage import open_file

log = logging.getLogger(__name__)


class CatalogError(ValueError):
    """The catalog as a whole cannot be ingested; nothing was written."""


TEXT = {".csv", ".tsv", ".txt"}
JSON_LINES = {".jsonl", ".ndjson", ".json"}


def _format(uri: str, name: str) -> tuple[str, str | None]:
    """(suffix, compression) of an export, or the CatalogError listing the accepted ones."""
    suffix = PurePosixPath(name.lower().removesuffix(".gz")).suffix
    if suffix not in TEXT | JSON_LINES | {".parquet"}:
        raise CatalogError(
            f"Catalog {uri}: unknown format {suffix!r}. Accepted: .csv, .tsv, .jsonl, "
            ".ndjson, .json (JSON Lines), .parquet (optionally .gz for text formats)."
        )
    return suffix, "gzip" if name.lower().endswith(".gz") else None


# Bytes that are not UTF-8 are read as lone surrogates (Python's surrogateescape), not as
# an error of the whole export: in a text column they reject their row (tagger.ingest.rows)
# and the other rows are ingested; anywhere else (_check_decoded) they are still the export's
# error, as an id or a label with them cannot be right. Escaping rather than replacing with
# U+FFFD keeps them apart from a real U+FFFD in a column that is not text.
_ESCAPED = re.compile("[\udc80-\udcff]")


def _frames(local: Path, suffix: str, compression: str | None, rows: int) -> Iterator[pd.DataFrame]:
    """The export's rows, `rows` at a time, as read: CSV cells as text, JSON and Parquet
    values as Python objects (no per-chunk type inference, so the cells do not depend on
    where the chunks fall)."""
    if suffix in TEXT:
        # object, not str: pandas' Arrow-backed strings cannot hold the escaped bytes
        with pd.read_csv(local, dtype=object, keep_default_na=False, encoding="utf-8",
                         encoding_errors="surrogateescape", sep="\t" if suffix == ".tsv" else ",",
                         compression=compression, chunksize=rows) as reader:
            yield from reader
    elif suffix in JSON_LINES:
        opener = gzip.open if compression else open
        with opener(local, "rt", encoding="utf-8", errors="surrogateescape") as f:
            for lines in iter(lambda: list(itertools.islice(f, rows)), []):
                records = [json.loads(line) for line in lines if line.strip()]
                if any(not isinstance(r, dict) for r in records):
                    raise ValueError("every line must be one JSON object")
                if records:
                    yield pd.DataFrame(records, dtype=object)
    else:
        with pq.ParquetFile(local) as f:
            for batch in f.iter_batches(batch_size=rows):
                yield pd.DataFrame(batch.to_pylist(), columns=batch.schema.names, dtype=object)


def _escaped(value: object) -> bool:
    if isinstance(value, str):
        return not value.isascii() and _ESCAPED.search(value) is not None
    return isinstance(value, (list, tuple)) and any(_escaped(v) for v in value)


def _not_utf8(uri: str, where: str) -> CatalogError:
    return CatalogError(f"Catalog {uri} is not UTF-8 ({where}). Re-export it as UTF-8, "
                        "e.g. iconv -f latin1 -t utf-8.")


def _check_decoded(df: pd.DataFrame, uri: str, text_columns: frozenset[str], offset: int) -> None:
    """The CatalogError of the first column name, or cell outside `text_columns`, that had
    bytes that are not UTF-8."""
    if any(_escaped(c) for c in df.columns):
        raise _not_utf8(uri, "in a column name")
    for column in df.columns:
        if column in text_columns:
            continue
        for i, value in enumerate(df[column].tolist()):
            if _escaped(value):
                raise _not_utf8(uri, f"row {offset + i}, column {column!r}")


def read_catalog_chunks(uri: str, rows: int = 100_000,
                        text_columns: frozenset[str] = frozenset()) -> Iterator[pd.DataFrame]:
    """The export as DataFrames of at most `rows` rows of Python objects (CSV cells stay
    text, '' = empty; None for a missing value), streamed from a local file (an S3 export
    is downloaded to one first): memory holds one chunk. A missing export or an unknown
    format is a CatalogError at once; one that cannot be parsed or has no rows, when the
    chunk that shows it is read. So is one with bytes that are not UTF-8, except in
    `text_columns` (text_only_columns), where they are kept as lone surrogates for the row
    check to reject."""
    storage, name = open_file(uri)
    if not storage.exists(name):
        raise CatalogError(f"Catalog {uri} does not exist.")
    suffix, compression = _format(uri, name)
    return _chunks(storage, name, uri, suffix, compression, rows, frozenset(text_columns))


def _chunks(storage, name: str, uri: str, suffix: str, compression: str | None,
            rows: int, text_columns: frozenset[str]) -> Iterator[pd.DataFrame]:
    with storage.local_copy(name) as local:
        frames, total = _frames(Path(local), suffix, compression, rows), 0
        while True:
            try:
                df = next(frames)
            except StopIteration:
                break
            except UnicodeDecodeError as e:
                raise _not_utf8(uri, f"byte {e.start}: {e.reason}") from None
            except UnicodeEncodeError:  # escaped bytes in a column name: pandas 3 cannot hold them
                raise _not_utf8(uri, "in a column name") from None
            except (ValueError, pd.errors.ParserError, pa.ArrowException, OSError, EOFError) as e:
                raise CatalogError(f"Catalog {uri} cannot be parsed as {suffix}: {e}") from None
            _check_decoded(df, uri, text_columns, total)
            total += len(df)
            if len(df):
                yield df.astype(object).where(df.notna(), None)
    if not total:
        raise CatalogError(f"Catalog {uri} has no rows.")


def template_fields(template: str) -> list[str]:
    """The column names a `{column}` template (image, text) reads."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _fields(part: str) -> list[str]:
    """The columns one mapped value reads: a column name, or a template's fields."""
    return template_fields(part) if "{" in part else [part]


def image_columns(m: CatalogMapping) -> list[str]:
    """The columns the mapping's `image` parts read, in order, each once."""
    return list(dict.fromkeys(c for part in m.images for c in _fields(part)))


def text_columns(m: CatalogMapping) -> list[str]:
    """The columns the mapping's `text` parts read, in order, each once."""
    return list(dict.fromkeys(c for part in m.text for c in _fields(part)))


def text_only_columns(taxonomy: Taxonomy) -> frozenset[str]:
    """The columns only the text reads: bytes that are not UTF-8 there reject their row (the
    text is damaged), not the whole export as they do in an id, image or label column."""
    m = taxonomy.catalog
    other = {m.id, m.category, *image_columns(m), *(a.source_column for a in taxonomy.attributes)}
    return frozenset(text_columns(m)) - other


def check_columns(df: pd.DataFrame, taxonomy: Taxonomy, uri: str) -> None:
    """Every column the mapping and taxonomy need is present, or a CatalogError naming them."""
    m = taxonomy.catalog
    needed = list(dict.fromkeys([m.id] + ([m.category] if m.category else [])
                                + image_columns(m) + text_columns(m)))
    labels = [a.source_column for a in taxonomy.attributes]
    missing = [c for c in needed if c not in df.columns]
    missing_labels = [c for c in labels if c not in df.columns]
    if missing or len(missing_labels) == len(labels):
        cols = [str(c) for c in df.columns]
        what = "columns" if missing else "every label column"
        raise CatalogError(
            f"Catalog {uri} lacks {what} {', '.join(_hints(missing or missing_labels, cols))}. "
            f"It has: {', '.join(cols)}. Rename them or set the taxonomy's `catalog:` mapping "
            "(id, category, image, text) and attributes' `column:`."
        )
    if missing_labels:
        log.warning("catalog has no column for %s: those labels are unknown", missing_labels)


def _hints(missing: list[str], columns: list[str]) -> list[str]:
    """Each missing column, quoted, with the closest column the export has (if any)."""
    by_lower = {c.lower(): c for c in columns}
    hints = []
    for c in missing:
        close = [by_lower[c.lower()]] if c.lower() in by_lower else difflib.get_close_matches(c, columns, n=1)
        hints.append(f"{c!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return hints
