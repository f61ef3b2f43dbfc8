"""Flow: the nightly run, ingest then tag, in one task (tagger.nightly: each new image is
decoded once, its model input handed from ingest to tagging in memory)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows._artifacts import publish_ingest, publish_tagging
from flows._common import DEFAULT_LAKE, retry_on_transient
from flows.review import review_push
from flows.tag import rejects_task
from tagger.config import IngestConfig, TagConfig
from tagger.nightly import run_nightly


@task(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_on_transient)
def nightly_task(catalog: str, taxonomy: str, lake: str, ingest_config: IngestConfig,
                 tag_config: TagConfig, run_id: str) -> dict:
    return run_nightly(catalog, taxonomy, lake, ingest_config, tag_config, tag_run_id=run_id).to_dict()


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
    # The flow run id is the tag run id: a retry of this flow run replaces its own output.
    night = nightly_task(catalog, taxonomy, lake, ingest_config, tag_config,
                         f"tag-{flow_run.get_id() or 'local'}")
    publish_ingest(night["ingest"])
    publish_tagging(night["tag"], rejects_task(lake))
    get_run_logger().info("%d new products, %d tagged (%d images scored from memory)",
                          night["ingest"]["new"], night["tag"]["tagged"], night["held_images"])
    out = {"ingest": night["ingest"], "tag": night["tag"]}
    if push_reviews:
        out["review_push"] = review_push(lake)
    return out
