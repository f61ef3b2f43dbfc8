"""Flow: delete what nothing in the lake needs any more (weekly; tagger.ops.vacuum)."""

from __future__ import annotations

from datetime import timedelta

from prefect import flow, get_run_logger, task

from flows._common import DEFAULT_LAKE, retry_on_transient
from tagger.ops.vacuum import vacuum_lake


@task(retries=2, retry_delay_seconds=60, retry_condition_fn=retry_on_transient)
def vacuum_task(lake: str, grace_hours: float, keep_history_days: int | None, dry_run: bool) -> dict:
    return vacuum_lake(lake, grace=timedelta(hours=grace_hours), keep_history_days=keep_history_days,
                       dry_run=dry_run).to_dict()


@flow(name="vacuum")
def vacuum(lake: str = DEFAULT_LAKE, grace_hours: float = 24.0, keep_history_days: int | None = None,
           dry_run: bool = False) -> dict:
    """Delete unreferenced image shards, finished checkpoints, orphaned evaluation ingests and
    (keep_history_days set) old tag history, all older than grace_hours."""
    result = vacuum_task(lake, grace_hours, keep_history_days, dry_run)
    get_run_logger().info("%s %d files, %d bytes", "would free" if dry_run else "freed",
                          len(result["deleted"]), result["bytes_freed"])
    return result
