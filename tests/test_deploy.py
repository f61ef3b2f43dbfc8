"""A team's first day, for real: a `prefect server start` on loopback with a temporary
PREFECT_HOME (SQLite), a process work pool, `prefect deploy --all` of prefect.yaml, the
nightly schedule checked, `retrain` triggered through the REST API with custom parameters
as the UI's "Custom run" does, a worker run until the flow run completes, the new model
version and the artifacts checked through the API; then `nightly` and its tag tables.

Server and workers are started here and stopped by PID in teardown, also when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from tagger.registry import list_versions
from tagger.storage import open_storage
from tests.conftest import DEMO_TAXONOMY, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "test-process"
# What a data scientist types into the Custom run form: a CPU-sized training run.
CUSTOM_TRAIN = dict(backbone="test_efficientnet", image_size=48, epochs=1, batch_size=16,
                    pretrained=False, workers=0, device="cpu", log_every=5)


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group we started (server: uvicorn child; worker: flow runs)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server on 127.0.0.1:<free port> with its own SQLite database."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_UI_ENABLED="false",
               TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited ({proc.returncode}):\n"
                            f"{(home / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > 180:
                pytest.fail("prefect server not healthy after 180 s:\n"
                            f"{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        print(f"prefect server healthy after {time.monotonic() - t0:.1f} s")
        yield env
    finally:
        _stop(proc)
        log.close()


def _cli(env, *args, timeout=300) -> str:
    proc = subprocess.run(PREFECT + list(args), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _api(env) -> httpx.Client:
    return httpx.Client(base_url=env["PREFECT_API_URL"], timeout=30)


def _run_worker_until_done(env, api, flow_run_id, timeout=600) -> dict:
    """`prefect worker start --run-once` until the flow run is final; the worker's process
    group is stopped in any case."""
    deadline = time.monotonic() + timeout
    while True:
        worker = subprocess.Popen(PREFECT + ["worker", "start", "--pool", POOL, "--run-once"],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = worker.communicate(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            out = ""
        finally:
            _stop(worker)
        run = api.get(f"/flow_runs/{flow_run_id}").raise_for_status().json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            if run["state"]["type"] != "COMPLETED":
                logs = api.post("/logs/filter", json={
                    "logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}).json()
                pytest.fail(f"flow run {run['name']} {run['state']['type']}: "
                            f"{run['state'].get('message')}\nworker:\n{out[-3000:]}\nlogs:\n"
                            + "\n".join(entry["message"] for entry in logs)[-5000:])
            return run
        if time.monotonic() > deadline:
            pytest.fail(f"flow run not finished after {timeout} s; worker:\n{out[-3000:]}")


def _deployment(api, name) -> dict:
    found = api.post("/deployments/filter", json={"deployments": {"name": {"any_": [name]}}}).json()
    assert len(found) == 1, f"deployment {name!r}: {found}"
    return found[0]


def _artifacts(api, flow_run_ids) -> dict:
    arts = api.post("/artifacts/filter", json={
        "artifacts": {"flow_run_id": {"any_": flow_run_ids}}, "sort": "CREATED_DESC"}).json()
    return {a["key"]: a for a in reversed(arts)}  # newest per key wins


def test_first_day_deploy_retrain_and_nightly(server, catalog, tmp_path):
    from tagger.ingest import ingest_catalog

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

    # The four deployments, the nightly schedule, no overlapping nightly runs.
    nightly = _deployment(api, "nightly")
    retrain = _deployment(api, "retrain")
    assert {d["name"] for d in api.post("/deployments/filter", json={}).json()} == {
        "nightly", "retrain", "tag", "tag-sharded", "ingest"}
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
