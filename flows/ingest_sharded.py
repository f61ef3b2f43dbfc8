"""Flow: ingest a large catalog with its images fetched, decoded and written to shards on a
Dask cluster (prefect-dask).

Same tables and shards as the `ingest` flow (tagger/ingest/sharded.py says how): this
flow run reads and validates the export and holds the lake's lock; each part of a chunk's
changed images is a task on a Dask worker, and so is each shard; the products table and
rejects are committed once, here. The cluster is TAGGER_DASK_ADDRESS's, as for
tag-sharded (flows/_dask.py); workers need the export's images and the lake.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from pydantic import Field
from typing_extensions import Annotated

from flows._artifacts import publish_ingest
from flows._common import DEFAULT_LAKE, retry_on_transient
from flows._dask import dask_task_runner
from tagger.config import IngestConfig
from tagger.ingest.sharded import FetchedPart, FetchPart, ShardPlan, fetch_part, ingest_in_parts, write_planned_shard

_RETRY = dict(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_on_transient)


@task(**_RETRY)
def fetch_task(part: FetchPart) -> FetchedPart:
    return fetch_part(part)


@task(**_RETRY)
def shard_task(plan: ShardPlan) -> bool:
    return write_planned_shard(plan)


class _Tasks:
    """The fan-out of ingest_in_parts: each part and each shard a task on the flow's cluster."""

    def fetch(self, parts: list[FetchPart]) -> list[FetchedPart]:
        return fetch_task.map(parts).result()

    def write(self, plans: list[ShardPlan]) -> list[bool]:
        return shard_task.map(plans).result()


@flow(name="ingest-sharded", task_runner=dask_task_runner())
def ingest_sharded(
    catalog: str,
    taxonomy: str,
    lake: str = DEFAULT_LAKE,
    part_rows: Annotated[int, Field(ge=1, le=1_000_000, description="Images per fetching task "
                                    "(a chunk's changed images are cut into parts of this many).")] = 2000,
    config: IngestConfig = IngestConfig(),
) -> dict:
    """Ingest a catalog export like `ingest`, fetching and storing its images on Dask workers."""
    result = ingest_in_parts(catalog, taxonomy, lake, config, run_id=f"ingest-{flow_run.get_id() or 'local'}",
                             fan_out=_Tasks(), part_rows=part_rows).to_dict()
    publish_ingest(result)
    get_run_logger().info("%d products (%d new, %d changed), %d rejected, %d shards", result["products"],
                          result["new"], result["changed"], result["rejected"], len(result["shards_written"]))
    return result
