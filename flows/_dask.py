"""The Dask task runner of the fanned-out flows (tag-sharded, ingest-sharded), from Settings.

Without TAGGER_DASK_ADDRESS a flow starts a local cluster of TAGGER_DASK_WORKERS (2)
processes, so it runs on one machine as it is; with it, it uses that cluster (`dask
scheduler` + `dask worker` on other machines). Read when a flow module is imported. Its own
module: prefect-dask (and distributed) are imported only by the flows that fan out.
"""

from __future__ import annotations

from prefect_dask import DaskTaskRunner

from tagger.config import load_settings


def dask_task_runner() -> DaskTaskRunner:
    settings = load_settings()
    if address := settings.dask_address:
        return DaskTaskRunner(address=address)
    cluster = dict(n_workers=settings.dask_workers, threads_per_worker=1, processes=True,
                   dashboard_address=None)
    return DaskTaskRunner(cluster_kwargs=cluster)
