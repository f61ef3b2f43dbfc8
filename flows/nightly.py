"""Flow: the nightly run, ingest then tag."""

from __future__ import annotations

from prefect import flow

from flows._common import DEFAULT_LAKE
from flows.ingest import ingest
from flows.review import review_push
from flows.tag import tag
from tagger.config import IngestConfig, TagConfig


@flow(name="nightly")
def nightly(
    catalog: str,
    taxonomy: str,
    lake: str = DEFAULT_LAKE,
    ingest_config: IngestConfig = IngestConfig(),
    tag_config: TagConfig = TagConfig(),
    push_reviews: bool = False,
) -> dict:
    """Ingest tonight's catalog export, then tag what is new or changed with the lake's
    production model (everything, the night after a promotion); with push_reviews, then add
    the new needs-review products to Label Studio (off: a lake need not have one)."""
    ingested = ingest(catalog, taxonomy, lake, ingest_config)
    tagged = tag(lake, config=tag_config)
    out = {"ingest": ingested, "tag": tagged}
    if push_reviews:
        out["review_push"] = review_push(lake)
    return out
