"""A re-ingest's unchanged rows, found before they are validated: taken as they were.

Most rows of a nightly export are the rows of the night before. Validating one (labels
parsed, images resolved, text cleaned) and building its products row again costs tens of
microseconds in Python, the bulk of a re-ingest of a million products. So each products row
keeps `row_digest`: a 64-bit digest of the export cells the mapping reads, keyed by what
else decides how they are read (`context_key`: the taxonomy and its mapping, the catalog's
folder, the image roots, the columns the export has). A row of the next export is taken as
it was, unvalidated, when

- its product id is in the previous table with the same digest,
- the id is on no other row of its chunk and on no row of an earlier chunk (duplicates are
  validated, so that the first row wins and the others are rejects as before), and
- every one of its images still has the source version (size and mtime, or ETag) the
  previous row recorded: a changed photo under the same name is fetched again.

A row keeps no digest, and is validated every run, when an image of it was left out, its
text was cut, or an image was reached through a symbolic link (a link can be re-pointed
while no file changes); and so do rows ingested by a version without this column, or fanned
out (`ingest-sharded`).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from catalog_schemas.taxonomy import Taxonomy
from tagger.config import IngestConfig
from tagger.ingest.export import image_columns, text_columns
from tagger.ingest.source import ImageSource, read_versions

# Raised when what a digest covers changes meaning: every row is then validated once.
DIGEST_VERSION = 1


def mapped_columns(taxonomy: Taxonomy, columns) -> list[str]:
    """The export's columns that validation reads, in a fixed order, each once."""
    m = taxonomy.catalog
    wanted = [m.id, m.category, *image_columns(m), *text_columns(m),
              *(a.source_column for a in taxonomy.attributes)]
    present = set(columns)
    return [c for c in dict.fromkeys(w for w in wanted if w) if c in present]


def context_key(taxonomy: Taxonomy, source: ImageSource, config: IngestConfig, columns: list[str]) -> str:
    """The 16 characters that key every row digest: what, besides a row's cells, decides
    what its products row is."""
    what = [DIGEST_VERSION, taxonomy.model_dump(mode="json"), source.base, source.real_base,
            sorted(config.image_roots), columns]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cell_text(v: object) -> object:
    """A cell pandas cannot hash as it is, as text: lists (JSON Lines, Parquet) as JSON, text
    with undecodable bytes (surrogate escapes) by its escaped bytes."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str)
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape").decode("latin-1")
    return v


def row_digests(df: pd.DataFrame, columns: list[str], key: str) -> np.ndarray:
    """Each row's digest of its `columns` cells (int64; pandas' hash of each column,
    vectorised, combined in column order)."""
    digest = np.zeros(len(df), np.uint64)
    for name in columns:
        values = df[name].to_numpy(dtype=object)
        try:
            h = pd.util.hash_array(values, hash_key=key, categorize=False)
        except (TypeError, ValueError, UnicodeEncodeError):  # lists, surrogate escapes
            h = pd.util.hash_array(np.array([_cell_text(v) for v in values], dtype=object),
                                   hash_key=key, categorize=False)
        digest = digest * np.uint64(1_000_003) ^ h  # wraps around, as meant
    return digest.view(np.int64)


def unchanged_rows(ids: list[str | None], digests: np.ndarray, seen_before: np.ndarray,
                   previous: pa.Table, source: ImageSource, config: IngestConfig) -> tuple[np.ndarray, pa.Table]:
    """Which rows of a chunk are taken as they were, and their previous rows (PRODUCTS, in
    chunk order). `previous`: the chunk's previous products rows (any order), `seen_before`:
    per row, whether an earlier chunk had its id."""
    n = len(ids)
    none = np.zeros(n, bool)
    if not previous.num_rows or not n:
        return none, previous.slice(0, 0)
    id_array = pa.array(ids, pa.string())
    at = pc.index_in(id_array, value_set=previous["product_id"])
    stored = pc.take(previous["row_digest"], at)
    has_digest = stored.is_valid().to_numpy(zero_copy_only=False)
    stored = pc.fill_null(stored, 0).to_numpy(zero_copy_only=False)
    alone = ~pd.Series(ids, dtype=object).duplicated(keep=False).to_numpy() & at.is_valid().to_numpy(zero_copy_only=False)
    candidate = alone & ~seen_before & has_digest & (stored == digests)
    rows = np.flatnonzero(candidate)
    if not len(rows):
        return none, previous.slice(0, 0)
    prev = previous.take(pc.take(at, pa.array(rows)))
    # every image still the version the previous row recorded
    more_images = prev["more_images"].combine_chunks()
    more = pc.list_flatten(more_images)
    uris = prev["image_uri"].to_pylist() + pc.struct_field(more, "image_uri").to_pylist()
    was = prev["image_version"].to_pylist() + pc.struct_field(more, "image_version").to_pylist()
    owner = np.concatenate([np.arange(len(rows)),
                            pc.list_parent_indices(more_images).to_numpy(zero_copy_only=False)])
    now = read_versions(source, uris, config.workers)
    moved = np.array([v is None or v != w for v, w in zip(now, was)], bool)
    same = np.bincount(owner[moved], minlength=len(rows)) == 0
    taken = np.zeros(n, bool)
    taken[rows[same]] = True
    return taken, prev.filter(pa.array(same))
