"""A real `prefect server start` on loopback for the deployment tests (test_deploy.py
through the REST API, test_ui.py through the web UI): a temporary PREFECT_HOME (SQLite),
a process work pool, `prefect deploy --all` of prefect.yaml, and `--run-once` workers.

Every process started here is stopped by PID (its process group), also when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.s3server import free_port

ROOT = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "test-process"


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
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


@contextmanager
def prefect_server(home: Path, ui: bool = False) -> Iterator[dict]:
    """A real Prefect server on 127.0.0.1:<free port> with its own SQLite database under
    `home`; yields the environment (PREFECT_API_URL, ...) for the CLI and workers.

    ui=True serves the web UI too, pointed at this port (PREFECT_UI_API_URL: without it
    the UI calls port 4200 and shows "Unable to connect to Prefect server")."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=api_url, PREFECT_UI_ENABLED=str(ui).lower(),
               TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    if ui:
        env["PREFECT_UI_API_URL"] = api_url
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
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
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
        stop(proc)
        log.close()


def cli(env, *args, timeout=300) -> str:
    proc = subprocess.run(PREFECT + list(args), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def api_client(env) -> httpx.Client:
    return httpx.Client(base_url=env["PREFECT_API_URL"], timeout=30)


def deploy_all(env, lake: str, catalog: str, taxonomy: str) -> dict:
    """Create the process pool and `prefect deploy --all` with every deployment on it,
    as README "Deploying" describes it without Docker; returns the deploy environment."""
    env = dict(env, TAGGER_CPU_POOL=POOL, TAGGER_GPU_POOL=POOL, TAGGER_IMAGE="product-tagger:test",
               TAGGER_LAKE=lake, TAGGER_CATALOG=catalog, TAGGER_TAXONOMY=taxonomy,
               TAGGER_WORKDIR=str(ROOT))
    cli(env, "work-pool", "create", POOL, "--type", "process")
    cli(env, "--no-prompt", "deploy", "--all")
    return env


def run_worker_until_done(env, api, flow_run_id, timeout=600) -> dict:
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
            stop(worker)
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


def deployment(api, name) -> dict:
    found = api.post("/deployments/filter", json={"deployments": {"name": {"any_": [name]}}}).json()
    assert len(found) == 1, f"deployment {name!r}: {found}"
    return found[0]


def artifacts(api, flow_run_ids) -> dict:
    arts = api.post("/artifacts/filter", json={
        "artifacts": {"flow_run_id": {"any_": flow_run_ids}}, "sort": "CREATED_DESC"}).json()
    return {a["key"]: a for a in reversed(arts)}  # newest per key wins
