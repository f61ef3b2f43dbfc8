"""Fixtures of the flow tests: a real Dask cluster on loopback (tests/dask_cluster.py)."""

import pytest

from tests.dask_cluster import dask_cluster


@pytest.fixture(scope="session")
def dask_address(tmp_path_factory) -> str:
    """The scheduler of a `dask scheduler` + two `dask worker` processes on 127.0.0.1."""
    with dask_cluster(tmp_path_factory.mktemp("dask")) as address:
        yield address
