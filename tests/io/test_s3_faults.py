"""S3 faults during ingest and tagging: a proxy on loopback in front of the endpoint answers
503 SlowDown, drops connections or adds latency. Bursts are retried by botocore (adaptive
mode); when the retries run out the run fails with one clear StorageError/CatalogError, the
previous tables stay readable, and a re-run finishes the job without duplicates."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from tagger.config import IngestConfig
from tagger.ingest.run import CatalogError, ingest_catalog
from tagger.lake import PRODUCTS_PATH, read_products
from tagger.io.storage import StorageError, open_storage
from tagger.lake import LATEST_PATH, read_latest
from tagger.tag.run import tag_catalog
from tests.conftest import DEMO_TAXONOMY
from tests.s3server import FaultProxy


def _put_tree(folder, uri: str) -> None:
    storage = open_storage(uri)
    for path in folder.rglob("*"):
        if path.is_file():
            storage.upload(path, path.relative_to(folder).as_posix())


@pytest.fixture
def proxy(s3_server, monkeypatch):
    """Every S3 request of the code under test goes through a FaultProxy (passing for now)."""
    p = FaultProxy(s3_server.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    yield p
    p.close()


@pytest.fixture
def exports(catalog, s3_bucket) -> str:
    """The generated catalog and its images on S3 (uploaded before any fault)."""
    _put_tree(catalog.parent, f"{s3_bucket}/exports")
    return f"{s3_bucket}/exports/catalog.csv"


def _assert_ingested(lake: str) -> None:
    products = read_products(open_storage(lake))
    ids = products["product_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 60


@pytest.mark.parametrize("mode", ["503", "drop"])
def test_ingest_survives_a_burst_of_faults(exports, s3_bucket, proxy, mode):
    proxy.inject(mode, after=5, count=8)
    result = ingest_catalog(exports, DEMO_TAXONOMY, f"{s3_bucket}/lake", IngestConfig(workers=4))
    assert proxy.faults == 8
    assert result.reject_reasons == {"missing_file": 1, "not_an_image": 1, "unknown_label": 1}
    _assert_ingested(f"{s3_bucket}/lake")


def test_ingest_survives_slow_responses(exports, s3_bucket, proxy):
    proxy.latency = 0.05
    result = ingest_catalog(exports, DEMO_TAXONOMY, f"{s3_bucket}/lake", IngestConfig(workers=8))
    assert (result.products, result.rejected) == (60, 3)


@pytest.mark.slow
@pytest.mark.parametrize("mode, when", [("503", 0.0), ("drop", 0.02), ("drop", 0.3), ("drop", 0.6),
                                        ("drop", 0.9)])
def test_ingest_out_of_retries_fails_cleanly_and_a_rerun_finishes(exports, s3_bucket, proxy,
                                                                  monkeypatch, mode, when):
    """The endpoint goes down for good at a point of the run (`when`: share of its requests:
    reading the catalog, the lock and products table, fetching images, writing shards and
    tables), with 2 attempts per request. ('drop' for the later points: a store answering
    503 SlowDown to everything makes botocore's adaptive mode slow to 0.5 requests/s.)"""
    root = open_storage(s3_bucket)
    first = pd.read_csv(io.BytesIO(root.read_bytes("exports/catalog.csv")), dtype=str,
                        keep_default_na=False)
    root.write_bytes("exports/first.csv", first.head(20).to_csv(index=False).encode())
    lake, scratch = f"{s3_bucket}/lake", f"{s3_bucket}/scratch"
    for where in (lake, scratch):  # yesterday's state
        ingest_catalog(f"{s3_bucket}/exports/first.csv", DEMO_TAXONOMY, where)
    storage = open_storage(lake)
    before = read_products(storage)
    proxy.inject("503", count=0)
    ingest_catalog(exports, DEMO_TAXONOMY, scratch, IngestConfig(workers=4))  # count its requests
    total = proxy.requests

    monkeypatch.setenv("TAGGER_S3_MAX_ATTEMPTS", "2")
    proxy.inject(mode, after=int(when * total))  # down for good
    with pytest.raises((StorageError, CatalogError)) as info:
        ingest_catalog(exports, DEMO_TAXONOMY, lake, IngestConfig(workers=4))
    assert "s3://" in str(info.value)
    assert "re-run" in str(info.value) or "were rejected" in str(info.value)

    proxy.inject(mode, count=0)  # the endpoint is back
    assert read_products(storage).equals(before)  # the previous state, whole
    ingest_catalog(exports, DEMO_TAXONOMY, lake)
    _assert_ingested(lake)


@pytest.fixture
def s3_trained_lake(trained_lake_template, s3_bucket) -> tuple[str, str]:
    """The session's trained lake copied onto S3 (no training here)."""
    src, version = trained_lake_template
    _put_tree(src, f"{s3_bucket}/lake")
    return f"{s3_bucket}/lake", version


@pytest.mark.parametrize("mode", ["503", "drop"])
def test_tag_survives_a_burst_of_faults(s3_trained_lake, proxy, mode):
    lake, version = s3_trained_lake
    proxy.inject(mode, after=3, count=6)
    result = tag_catalog(lake, model_version=version, run_id="tag-1")
    assert proxy.faults == 6 and result.tagged == 60
    latest = read_latest(open_storage(lake)).to_pandas()
    assert not latest.duplicated(["product_id", "attribute", "value"]).any()


@pytest.mark.slow
@pytest.mark.parametrize("when", [0.1, 0.5, 0.8, 0.95])
def test_tag_out_of_retries_fails_cleanly_and_a_rerun_finishes(s3_trained_lake, trained_lake_template,
                                                               proxy, monkeypatch, when):
    """The endpoint goes down for good at a point of a full re-tag (`when`: share of its
    requests: model, products, shards, then the history, latest and state writes)."""
    lake, version = s3_trained_lake
    storage = open_storage(lake)
    tag_catalog(lake, model_version=version, run_id="tag-1")
    before = read_latest(storage)
    scratch = lake.replace("/lake", "/scratch")
    _put_tree(trained_lake_template[0], scratch)
    tag_catalog(scratch, model_version=version, run_id="tag-1")
    proxy.inject("drop", count=0)
    tag_catalog(scratch, model_version=version, run_id="tag-2", full=True)  # count its requests
    total = proxy.requests

    monkeypatch.setenv("TAGGER_S3_MAX_ATTEMPTS", "2")
    proxy.inject("drop", after=int(when * total))
    try:  # at 0.95 only the lock release is left: its failure is logged, the run succeeds
        tag_catalog(lake, model_version=version, run_id="tag-2", full=True)
        assert when > 0.9
    except StorageError as e:
        assert "s3://" in str(e) and "re-run" in str(e)

    proxy.inject("drop", count=0)
    latest = read_latest(storage)
    # the previous snapshot, or (killed after its commit) the new one: never a mix
    assert latest.equals(before) or set(latest["run_id"].to_pylist()) == {"tag-2"}
    tag_catalog(lake, model_version=version, run_id="tag-2", full=True)
    latest = read_latest(storage).to_pandas()
    assert not latest.duplicated(["product_id", "attribute", "value"]).any()
    assert set(latest["run_id"]) == {"tag-2"}
    history = [p for p in storage.list("tags/history") if p.endswith(".parquet")]
    assert sorted(p.rsplit("/", 1)[1] for p in history) == ["tag-1.parquet", "tag-2.parquet"]
    assert storage.exists(LATEST_PATH) and storage.exists(PRODUCTS_PATH)
