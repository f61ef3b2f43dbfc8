"""The catalog export as a whole: read it (CSV / TSV / JSON Lines / Parquet, local or S3) and
check that it has the columns the taxonomy needs. Problems here are a CatalogError, raised
before anything is written."""

from __future__ import annotations

import difflib
import io
import logging
import string
from pathlib import PurePosixPath

import pandas as pd

from catalog_schemas.taxonomy import Taxonomy
from tagger.io.storage import open_file

log = logging.getLogger(__name__)


class CatalogError(ValueError):
    """The catalog as a whole cannot be ingested; nothing was written."""


def _parse(data: bytes, uri: str, suffix: str, compression: str | None) -> pd.DataFrame:
    if suffix in {".csv", ".tsv", ".txt"}:
        return pd.read_csv(
            io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8",
            sep="\t" if suffix == ".tsv" else ",", compression=compression,
        )
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return pd.read_json(io.BytesIO(data), lines=True, dtype=False, compression=compression)
    if suffix == ".parquet":
        return pd.read_parquet(io.BytesIO(data))
    raise CatalogError(
        f"Catalog {uri}: unknown format {suffix!r}. Accepted: .csv, .tsv, .jsonl, "
        ".ndjson, .json (JSON Lines), .parquet (optionally .gz for text formats)."
    )


def read_catalog(uri: str) -> pd.DataFrame:
    """The export as a DataFrame of Python objects; CSV cells stay text ('' = empty)."""
    storage, name = open_file(uri)
    if not storage.exists(name):
        raise CatalogError(f"Catalog {uri} does not exist.")
    data = storage.read_bytes(name)
    suffix = PurePosixPath(name.lower().removesuffix(".gz")).suffix
    compression = "gzip" if name.lower().endswith(".gz") else None
    try:
        df = _parse(data, uri, suffix, compression)
    except UnicodeDecodeError as e:
        raise CatalogError(
            f"Catalog {uri} is not UTF-8 (byte {e.start}: {e.reason}). Re-export it as UTF-8, "
            "e.g. iconv -f latin1 -t utf-8."
        ) from None
    except (ValueError, pd.errors.ParserError) as e:
        if isinstance(e, CatalogError):
            raise
        raise CatalogError(f"Catalog {uri} cannot be parsed as {suffix}: {e}") from None
    if df.empty:
        raise CatalogError(f"Catalog {uri} has no rows.")
    return df.astype(object).where(df.notna(), None)


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
