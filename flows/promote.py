"""Flow: make a model version the lake's production version, or roll back to an earlier one."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows._artifacts import publish_promoted
from flows._common import DEFAULT_LAKE, retry_on_transient
from tagger.io.storage import open_storage
from tagger.model.production import promote_version


# Retried: promoting the production version again changes nothing (promote_version).
@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_on_transient)
def promote_task(lake: str, version: str, by: str, reason: str) -> dict:
    return promote_version(open_storage(lake), version, by=by, reason=reason).model_dump()


@flow(name="promote")
def promote(version: str, lake: str = DEFAULT_LAKE, reason: str = "") -> dict:
    """Make `version` production: the next tag and nightly runs tag with it (an earlier
    version: a rollback)."""
    promotion = promote_task(lake, version, f"flow run {flow_run.get_name() or 'local'}", reason)
    publish_promoted(promotion)
    get_run_logger().info("production of %s is %s (%s)", lake, promotion["version"], promotion["rule"])
    return promotion
