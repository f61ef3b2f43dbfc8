"""The Prefect flows, run against Prefect's test harness (one temporary server per session)."""

import duckdb
import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.conftest import DEMO_TAXONOMY, TINY_TRAIN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flows_end_to_end(prefect_api, catalog, tmp_path):
    """ingest -> train -> tag as flows, then the nightly flow on a changed catalog."""
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.ingest import ingest
    from flows.nightly import nightly
    from flows.tag import tag
    from flows.train import train

    lake = str(tmp_path / "lake")
    ingested = ingest(str(catalog), DEMO_TAXONOMY, lake)
    assert (ingested["products"], ingested["rejected"]) == (60, 3)
    version = train(lake, TINY_TRAIN)
    tagged = tag(lake)
    assert tagged["model_version"] == version and tagged["tagged"] == 60
    assert tagged["run_id"].startswith("tag-") and tagged["run_id"] != "tag-local"

    with open(catalog, "a") as f:  # a new product arrives overnight
        f.write("NEW1,bags,images/P00001.jpg,bag,red,solid,,-\n")
    result = nightly(str(catalog), DEMO_TAXONOMY, lake)
    assert result["ingest"]["new"] == 1 and result["tag"]["tagged"] == 1
    rows = duckdb.sql(f"SELECT count(DISTINCT product_id) FROM '{lake}/tags/latest/*.parquet'").fetchall()[0]
    assert rows[0] >= 55  # products with at least one tag (curated or predicted)

    async def report():
        async with get_client() as client:
            return await client.read_artifacts()

    artifacts = asyncio.run(report())
    md = [a for a in artifacts if a.key == "model-report"]
    assert md and f"# Model {version}" in md[0].data
    by_key = {a.key: a for a in sorted(artifacts, key=lambda a: a.created)}  # newest per key
    assert {"model-metrics", "training-curves", "tag-summary", "tag-attributes", "promotion"} <= set(by_key)
    assert "promoted to production: the lake's first model" in by_key["promotion"].data
    assert by_key["model-metrics"].type == "table"
    assert by_key["training-curves"].type == "table"
    summary = by_key["tag-summary"].data  # the nightly run: one new product
    assert "1 of 61 products tagged" in summary and "Rejects of the last ingest: 3" in summary
    assert "products_changed" not in summary and "on 1 products" in summary


def test_retries_only_on_transient_errors(prefect_api):
    """A deterministic error (bad input) fails at once; a network error is tried again."""
    from prefect import flow, task

    from flows._common import retry_on_transient

    calls = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_transient)
    def flaky(exc: type[Exception]) -> None:
        calls.append(exc)
        raise exc("boom")

    @flow
    def run(exc: type[Exception]) -> None:
        flaky(exc)

    for exc, tries in ((ValueError, 1), (FileNotFoundError, 1), (ConnectionError, 3)):
        calls.clear()
        with pytest.raises(exc):
            run(exc)
        assert len(calls) == tries, exc

    from tests.flows.test_retry import client_error, storage_error

    denied = storage_error(client_error(403, "AccessDenied"))  # through Prefect's state: the cause survives

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_transient)
    def s3_denied() -> None:
        calls.append(1)
        raise denied

    @flow
    def read_denied() -> None:
        s3_denied()

    calls.clear()
    with pytest.raises(type(denied)):
        read_denied()
    assert len(calls) == 1


@pytest.mark.parametrize("cluster", ["local", "scheduler"])
def test_sharded_tagging_gives_the_same_tags_as_one_process(cluster, prefect_api, trained_lake, tmp_path, request):
    """tag-sharded writes the tags `tag` writes: on the local cluster it starts itself (2
    worker processes), and on a `dask scheduler` + 2 `dask worker` processes it is pointed
    at by address (tests/dask_cluster.py), as in production."""
    import shutil

    import numpy as np

    from flows.tag import tag
    from flows.tag_sharded import tag_sharded
    from tagger.io.storage import open_storage
    from tagger.lake import read_latest

    if cluster == "scheduler":
        from prefect_dask import DaskTaskRunner

        tag_sharded = tag_sharded.with_options(
            task_runner=DaskTaskRunner(address=request.getfixturevalue("dask_address")))
    lake, version = trained_lake
    other = tmp_path / "other"
    shutil.copytree(lake, other)
    one = tag(str(lake), full=True)
    sharded = tag_sharded(str(other), full=True, shards=3)
    assert sharded["tagged"] == one["tagged"] == 60 and sharded["model_version"] == version
    a, b = (read_latest(open_storage(str(x))).to_pylist() for x in (lake, other))
    key = lambda r: (r["product_id"], r["attribute"], r["value"], r["source"])
    assert [key(r) for r in a] == [key(r) for r in b] and len(a) > 100
    # same model, same images; only the batches differ: scores agree to float rounding
    sa, sb = (np.array([r["score"] if r["score"] is not None else -1 for r in t]) for t in (a, b))
    assert np.abs(sa - sb).max() < 1e-4


def test_promote_flow_moves_production_and_says_so(prefect_api, trained_lake):
    import asyncio
    import shutil

    from prefect.client.orchestration import get_client

    from flows.promote import promote
    from tagger.io.storage import open_storage
    from tagger.model.production import history, production_version

    lake, first = trained_lake
    second = first[:-4] + "beef"  # a second version: the first's files under another name
    shutil.copytree(lake / "models" / first, lake / "models" / second)
    card = lake / "models" / second / "card.json"
    card.write_text(card.read_text().replace(first, second))
    result = promote(second, str(lake), reason="from the UI")
    storage = open_storage(lake)
    assert (result["version"], result["rule"], result["previous"]) == (second, "manual", first)
    assert production_version(storage) == second
    assert history(storage)[-1].by.startswith("flow run ") and history(storage)[-1].reason == "from the UI"

    async def promotion_artifact():
        async with get_client() as client:
            arts = [a for a in await client.read_artifacts() if a.key == "promotion"]
            return max(arts, key=lambda a: a.created).data

    assert f"# Production: {second}" in asyncio.run(promotion_artifact())


def test_tag_summary_shows_taxonomy_drift(monkeypatch):
    import flows._artifacts as artifacts

    shown = {}
    monkeypatch.setattr(artifacts, "create_markdown_artifact", lambda md, **kw: shown.update(md=md))
    monkeypatch.setattr(artifacts, "create_table_artifact", lambda *a, **kw: None)
    result = dict(run_id="r", model_version="v", tagged=1, products=1, skipped=0, removed=0,
                  latest_rows=1, latest_path="lake/tags/latest", tags_per_attribute={},
                  changes=dict(added=0, removed=0, changed=0, products_changed=0, per_attribute={}),
                  drift=dict(warning="the model can never predict colour: purple"))
    artifacts.publish_tagging(result, dict(total=0))
    assert "## Taxonomy drift" in shown["md"] and "never predict colour: purple" in shown["md"]
