"""Flow: the nightly run, ingest then tag."""

from __future__ import annotations

from prefect import flow

from flows._common import DEFAULT_LAKE
from flows.ingest import ingest
from flows.tag import tag
from tagger.config import IngestConfig, TagConfig


@flow(name="nightly")
def nightly(
    catalog: str,
    taxonomy: str,
    lake: str = DEFAULT_LAKE,
    ingest_config: IngestConfig = IngestConfig(),
    tag_config: TagConfig = TagConfig(),
) -> dict:
    """Ingest tonight's catalog export, then tag what is new or changed with the lake's
    production model (everything, the night after a promotion)."""
    ingested = ingest(catalog, taxonomy, lake, ingest_config)
    tagged = tag(lake, config=tag_config)
    return {"ingest": ingested, "tag": tagged}
