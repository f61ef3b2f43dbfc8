"""Flow: catalog export -> products, image shards, rejects."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows._artifacts import publish_ingest
from flows._common import DEFAULT_LAKE, retry_on_transient
from tagger.config import IngestConfig
from tagger.ingest.run import ingest_catalog


@task(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_on_transient)
def ingest_task(catalog: str, taxonomy: str, lake: str, config: IngestConfig) -> dict:
    return ingest_catalog(catalog, taxonomy, lake, config).to_dict()


@flow(name="ingest")
def ingest(
    catalog: str,
    taxonomy: str,
    lake: str = DEFAULT_LAKE,
    config: IngestConfig = IngestConfig(),
) -> dict:
    """Ingest a catalog export (CSV / JSON Lines / Parquet, local or s3://) into the lake."""
    result = ingest_task(catalog, taxonomy, lake, config)
    publish_ingest(result)
    get_run_logger().info(
        "%d products (%d new, %d changed), %d rejected", result["products"], result["new"],
        result["changed"], result["rejected"],
    )
    return result
