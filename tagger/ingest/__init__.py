"""Catalog export -> products, image shards, rejects (tagger.ingest.run.ingest_catalog)."""
