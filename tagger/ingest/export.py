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
import string
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from catalog_schemas.taxonomy import Taxonomy
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


def _frames(local: Path, suffix: str, compression: str | None, rows: int) -> Iterator[pd.DataFrame]:
    """The export's rows, `rows` at a time, as read: CSV cells as text, JSON and Parquet
    values as Python objects (no per-chunk type inference, so the cells do not depend on
    where the chunks fall)."""
    if suffix in TEXT:
        with pd.read_csv(local, dtype=str, keep_default_na=False, encoding="utf-8",
                         sep="\t" if suffix == ".tsv" else ",", compression=compression,
                         chunksize=rows) as reader:
            yield from reader
    elif suffix in JSON_LINES:
        with (gzip.open if compression else open)(local, "rt", encoding="utf-8") as f:
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


def read_catalog_chunks(uri: str, rows: int = 100_000) -> Iterator[pd.DataFrame]:
    """The export as DataFrames of at most `rows` rows of Python objects (CSV cells stay
    text, '' = empty; None for a missing value), streamed from a local file (an S3 export
    is downloaded to one first): memory holds one chunk. A missing export or an unknown
    format is a CatalogError at once; one that cannot be parsed or has no rows, when the
    chunk that shows it is read."""
    storage, name = open_file(uri)
    if not storage.exists(name):
        raise CatalogError(f"Catalog {uri} does not exist.")
    suffix, compression = _format(uri, name)
    return _chunks(storage, name, uri, suffix, compression, rows)


def _chunks(storage, name: str, uri: str, suffix: str, compression: str | None,
            rows: int) -> Iterator[pd.DataFrame]:
    with storage.local_copy(name) as local:
        frames, total = _frames(Path(local), suffix, compression, rows), 0
        while True:
            try:
                df = next(frames)
            except StopIteration:
                break
            except UnicodeDecodeError as e:
                raise CatalogError(
                    f"Catalog {uri} is not UTF-8 (byte {e.start}: {e.reason}). Re-export it as UTF-8, "
                    "e.g. iconv -f latin1 -t utf-8."
                ) from None
            except (ValueError, pd.errors.ParserError, pa.ArrowException, OSError, EOFError) as e:
                raise CatalogError(f"Catalog {uri} cannot be parsed as {suffix}: {e}") from None
            total += len(df)
            if len(df):
                yield df.astype(object).where(df.notna(), None)
    if not total:
        raise CatalogError(f"Catalog {uri} has no rows.")


def template_fields(template: str) -> list[str]:
    """The column names a `{column}` image template reads."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def check_columns(df: pd.DataFrame, taxonomy: Taxonomy, uri: str) -> None:
    """Every column the mapping and taxonomy need is present, or a CatalogError naming them."""
    m = taxonomy.catalog
    needed = [m.id] + ([m.category] if m.category else [])
    needed += template_fields(m.image) if "{" in m.image else [m.image]
    labels = [a.source_column for a in taxonomy.attributes]
    missing = [c for c in needed if c not in df.columns]
    missing_labels = [c for c in labels if c not in df.columns]
    if missing or len(missing_labels) == len(labels):
        cols = [str(c) for c in df.columns]
        what = "columns" if missing else "every label column"
        raise CatalogError(
            f"Catalog {uri} lacks {what} {', '.join(_hints(missing or missing_labels, cols))}. "
            f"It has: {', '.join(cols)}. Rename them or set the taxonomy's `catalog:` mapping "
            "(id, category, image) and attributes' `column:`."
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
