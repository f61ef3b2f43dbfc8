"""Flow: tag new and changed products (everything with a new model) into tag tables."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows._artifacts import publish_tagging
from flows._common import DEFAULT_LAKE, retry_on_transient
from tagger.config import TagConfig
from tagger.ingest.rejects import read_reject_counts
from tagger.tag.run import tag_catalog


@task(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_on_transient)
def tag_task(lake: str, model_version: str | None, full: bool, run_id: str, config: TagConfig) -> dict:
    return tag_catalog(lake, model_version=model_version, full=full, run_id=run_id,
                       config=config).to_dict()


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_on_transient)
def rejects_task(lake: str) -> dict:
    return read_reject_counts(lake)


@flow(name="tag")
def tag(
    lake: str = DEFAULT_LAKE,
    model_version: str | None = None,
    full: bool = False,
    config: TagConfig = TagConfig(),
) -> dict:
    """Tag the lake's products with a model version (default: the lake's production version)."""
    # The flow run id is the tag run id: a retry of this flow run replaces its own output.
    result = tag_task(lake, model_version, full, f"tag-{flow_run.get_id() or 'local'}", config)
    publish_tagging(result, rejects_task(lake))
    get_run_logger().info("tagged %d products, %d latest tag rows", result["tagged"],
                          result["latest_rows"])
    return result
