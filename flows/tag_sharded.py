"""Flow: tag a large catalog in shards fanned out over a Dask cluster (prefect-dask).

Same tables as the `tag` flow: the plan, the scoring and the commit are the same tagger
functions; only the scoring runs as one task per shard, on Dask workers. Without
TAGGER_DASK_ADDRESS the flow starts a local cluster of TAGGER_DASK_WORKERS (2) processes;
with it, it uses that cluster (e.g. `dask scheduler` + `dask worker` on GPU machines). Both
are Settings (tagger/config.py), read when this module is imported (flows/_dask.py).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task, unmapped
from prefect.runtime import flow_run
from pydantic import Field
from typing_extensions import Annotated

from flows._artifacts import publish_tagging
from flows._common import DEFAULT_LAKE, retry_on_transient
from flows._dask import dask_task_runner as _dask
from flows.tag import rejects_task
from tagger.config import TagConfig
from tagger.tag.run import TagPlan, plan_tagging, score_products, write_tags

_RETRY = dict(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_on_transient)


@task(**_RETRY)
def plan_task(lake: str, model_version: str | None, full: bool) -> TagPlan:
    return plan_tagging(lake, model_version=model_version, full=full)


@task(**_RETRY)
def score_task(lake: str, model_version: str, product_ids: list[str], config: TagConfig) -> dict:
    return score_products(lake, model_version, product_ids, config)


@task(**_RETRY)
def write_task(lake: str, plan: TagPlan, rows: list[dict], full: bool, run_id: str,
               config: TagConfig) -> dict:
    return write_tags(lake, plan, rows, full=full, run_id=run_id, config=config).to_dict()


@flow(name="tag-sharded", task_runner=_dask())
def tag_sharded(
    lake: str = DEFAULT_LAKE,
    model_version: str | None = None,
    full: bool = False,
    shards: Annotated[int, Field(ge=1, le=10_000, description="Scoring tasks (contiguous "
                                 "slices of the products to tag).")] = 4,
    config: TagConfig = TagConfig(),
) -> dict:
    """Tag the lake's products like `tag` (default: the production version), scoring
    shards in parallel on Dask workers."""
    plan = plan_task(lake, model_version, full)
    size = -(-len(plan.product_ids) // shards) or 1
    parts = [plan.product_ids[i:i + size] for i in range(0, len(plan.product_ids), size)]
    rows = score_task.map(lake, plan.model_version, parts, unmapped(config)).result()
    result = write_task(lake, plan, rows, full, f"tag-{flow_run.get_id() or 'local'}", config)
    publish_tagging(result, rejects_task(lake))
    get_run_logger().info("tagged %d products in %d shards", result["tagged"], len(parts))
    return result
