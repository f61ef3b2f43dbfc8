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
