"""A team's first day, for real: a `prefect server start` on loopback with a temporary
PREFECT_HOME (SQLite), a process work pool, `prefect deploy --all` of prefect.yaml, the
nightly schedule checked, `retrain` triggered through the REST API with custom parameters
as the UI's "Custom run" does, a worker run until the flow run completes, the new model
version and the artifacts checked through the API; then `nightly` and its tag tables.

Server and workers are started here and stopped by PID in teardown, also when a test fails.
"""

from __future__ import annotations

import time

import duckdb
import pytest

from tagger.model.versions import list_versions
from tagger.io.storage import open_storage
from tests.conftest import DEMO_TAXONOMY
from tests.prefect_server import (  # shared with test_ui.py
    POOL, ROOT, prefect_server,
    api_client as _api, artifacts as _artifacts, cli as _cli, deployment as _deployment,
    run_worker_until_done as _run_worker_until_done,
)

pytestmark = pytest.mark.slow

# What a data scientist types into the Custom run form: a CPU-sized training run.
CUSTOM_TRAIN = dict(backbone="test_efficientnet", image_size=48, epochs=1, batch_size=16,
                    pretrained=False, workers=0, device="cpu", log_every=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server on 127.0.0.1:<free port> with its own SQLite database."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        yield env


def test_first_day_deploy_retrain_and_nightly(server, catalog, tmp_path):
    from tagger.ingest.run import ingest_catalog

    env = dict(server)
    lake = str(tmp_path / "lake")
    ingest_catalog(str(catalog), DEMO_TAXONOMY, lake)  # the catalog is in the lake already
    env.update(TAGGER_CPU_POOL=POOL, TAGGER_GPU_POOL=POOL, TAGGER_IMAGE="product-tagger:test",
               TAGGER_LAKE=lake, TAGGER_CATALOG=str(catalog), TAGGER_TAXONOMY=DEMO_TAXONOMY,
               TAGGER_WORKDIR=str(ROOT))

    t0 = time.monotonic()
    _cli(env, "work-pool", "create", POOL, "--type", "process")
    _cli(env, "--no-prompt", "deploy", "--all")
    print(f"work pool + prefect deploy --all: {time.monotonic() - t0:.1f} s")
    api = _api(env)

    # The deployments, the nightly schedule, no overlapping nightly runs.
    nightly = _deployment(api, "nightly")
    retrain = _deployment(api, "retrain")
    assert {d["name"] for d in api.post("/deployments/filter", json={}).json()} == {
        "nightly", "retrain", "tag", "tag-sharded", "ingest-sharded", "ingest", "promote", "vacuum", "review-push",
        "review-pull"}
    [schedule] = [s["schedule"] for s in nightly["schedules"]]
    assert (schedule["cron"], schedule["timezone"]) == ("0 2 * * *", "Europe/Berlin")
    assert nightly["schedules"][0]["active"] and nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["parameters"] == dict(catalog=str(catalog), taxonomy=DEMO_TAXONOMY, lake=lake)
    assert retrain["work_pool_name"] == POOL and retrain["enforce_parameter_schema"]
    gpu = retrain["job_variables"]["container_create_kwargs"]["device_requests"][0]
    assert gpu["capabilities"] == [["gpu"]] and gpu["count"] == -1

    # Bad parameters are refused by the API before any work starts, with the reason.
    bad = api.post(f"/deployments/{retrain['id']}/create_flow_run",
                   json={"parameters": {"lake": lake, "config": {**CUSTOM_TRAIN, "epochs": 0}}})
    assert bad.status_code == 409 and "config.epochs" in bad.json()["detail"], bad.text
    assert "minimum of 1" in bad.json()["detail"]

    # retrain with custom parameters, exactly the request of the UI's Custom run.
    t0 = time.monotonic()
    run = api.post(f"/deployments/{retrain['id']}/create_flow_run",
                   json={"parameters": {"lake": lake, "config": CUSTOM_TRAIN}}).raise_for_status().json()
    _run_worker_until_done(env, api, run["id"])
    print(f"retrain flow run through a worker: {time.monotonic() - t0:.1f} s")
    [version] = list_versions(open_storage(lake))
    arts = _artifacts(api, [run["id"]])
    assert f"# Model {version}" in arts["model-report"]["data"]
    assert "test_efficientnet" in arts["model-report"]["data"]
    assert arts["model-metrics"]["type"] == "table" and "colour" in arts["model-metrics"]["data"]

    # nightly with its deployed parameters: ingest + tag into the tag tables.
    t0 = time.monotonic()
    run = api.post(f"/deployments/{nightly['id']}/create_flow_run", json={}).raise_for_status().json()
    _run_worker_until_done(env, api, run["id"])
    print(f"nightly flow run through a worker: {time.monotonic() - t0:.1f} s")
    latest = duckdb.sql(f"SELECT count(DISTINCT product_id), count(*), min(model_version), "
                        f"max(model_version) FROM '{lake}/tags/latest/*.parquet'").fetchall()[0]
    assert latest[0] >= 55 and latest[2] == latest[3] == version
    history = duckdb.sql(f"SELECT count(*) FROM read_parquet('{lake}/tags/history/*/*.parquet', "
                         "hive_partitioning = true)").fetchall()[0]
    assert history[0] == latest[1]  # the first tag run: history = latest
    subruns = api.post("/flow_runs/filter", json={
        "flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}}).json()
    tag_arts = _artifacts(api, [run["id"]] + [r["id"] for r in subruns])
    assert "60 of 60 products tagged" in tag_arts["tag-summary"]["data"]
    assert "Rejects of the last ingest: 3" in tag_arts["tag-summary"]["data"]
