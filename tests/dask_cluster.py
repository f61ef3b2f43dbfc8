"""A real Dask cluster on loopback for the fanned-out flows (tag-sharded, ingest-sharded):
`dask scheduler` and `dask worker` processes on 127.0.0.1 at free ports, each worker its own
process (a nanny and its worker, one thread), as an operator starts them on other machines.

Every process started here runs in its own process group and is stopped by PID (the group),
also when a test fails (tests.prefect_server.stop).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.prefect_server import stop
from tests.s3server import free_port

ROOT = Path(__file__).resolve().parents[1]
DASK = [sys.executable, "-m", "dask"]


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(DASK + args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("*.log")))


@contextmanager
def dask_cluster(folder: Path, workers: int = 2, timeout: float = 120) -> Iterator[str]:
    """A scheduler and `workers` workers; yields the scheduler's address (tcp://127.0.0.1:port)."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # Workers import flows/ and tagger/ from this checkout, the tasks' modules, like a worker
    # image with the project installed; one thread each, as on a 2-core machine.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                    folder / "scheduler.log", env)]
    try:
        for i in range(workers):
            procs.append(_start(["worker", address, "--host", "127.0.0.1", "--name", f"worker-{i}",
                                 "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                 "--memory-limit", "0", "--local-directory", str(folder / f"worker-{i}")],
                                folder / f"worker-{i}.log", env))
        t0 = time.monotonic()
        with Client(address, timeout=timeout) as client:
            while len(client.scheduler_info(n_workers=-1)["workers"]) < workers:
                dead = [p.args[3] for p in procs if p.poll() is not None]
                if dead or time.monotonic() - t0 > timeout:
                    pytest.fail(f"dask cluster not up after {time.monotonic() - t0:.0f} s "
                                f"(exited: {dead}):\n{_logs(folder)}")
                time.sleep(0.5)
        print(f"dask scheduler + {workers} workers up after {time.monotonic() - t0:.1f} s")
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc)
