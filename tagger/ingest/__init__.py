"""Catalog export -> products, image shards, rejects: `ingest_catalog` (tagger.ingest.run).

A room of small steps: export (read and check the export), rows (validate each row),
source (where images come from, bounded reads), shards (fetch, normalise, write image
shards), rejects and products (the tables written at the end of a run).
"""

from tagger.ingest.export import CatalogError
from tagger.ingest.rejects import read_reject_counts
from tagger.ingest.run import IngestResult, ingest_catalog

__all__ = ["CatalogError", "IngestResult", "ingest_catalog", "read_reject_counts"]
