"""The whole pipeline with every URI local or s3:// (catalog, images, lake, weights), on the
loopback S3 endpoint; credentials never reach a log line or a table."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import boto3
import pandas as pd
import pytest

from tagger.ingest.run import ingest_catalog
from tagger.lake import read_products
from tagger.model.factory import create_model
from tagger.model.weights import save_weights
from tagger.io.storage import open_storage
from tagger.lake import LATEST_PATH
from tagger.tag.run import tag_catalog
from tagger.train.run import train_model
from tests.conftest import DEMO_TAXONOMY, TINY_TRAIN


def _put_tree(folder: Path, uri: str) -> None:
    storage = open_storage(uri)
    for path in folder.rglob("*"):
        if path.is_file():
            storage.upload(path, path.relative_to(folder).as_posix())


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """Where catalog, images, lake and weights live: a folder or s3://bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket")


@pytest.mark.slow
def test_ingest_train_tag_with_every_uri_local_or_s3(catalog, root, caplog):
    caplog.set_level(logging.DEBUG)  # botocore's debug lines included: they must not hold the secret
    exports, lake, weights = f"{root}/exports", f"{root}/lake", f"{root}/weights/tiny.safetensors"
    _put_tree(catalog.parent, exports) if root.startswith("s3://") else shutil.copytree(catalog.parent, exports)
    local_weights = catalog.parent.parent / "tiny.safetensors"
    save_weights(create_model(TINY_TRAIN.backbone, 3, pretrained=False), local_weights)
    store, name = open_storage(f"{root}/weights"), "tiny.safetensors"
    store.upload(local_weights, name)

    ingested = ingest_catalog(f"{exports}/catalog.csv", DEMO_TAXONOMY, lake)
    assert (ingested.products, ingested.rejected) == (60, 3)
    version = train_model(lake, TINY_TRAIN.model_copy(update={"weights": weights, "epochs": 1}))
    tagged = tag_catalog(lake, model_version=version, run_id="tag-1")
    again = tag_catalog(lake, model_version=version, run_id="tag-1", full=True)  # same run id: replaces
    assert tagged.tagged == again.tagged == 60

    storage = open_storage(lake)
    latest = pd.read_parquet(io.BytesIO(storage.read_bytes(LATEST_PATH)))
    assert not latest.duplicated(["product_id", "attribute", "value"]).any()
    assert set(latest["product_id"]) <= set(read_products(storage)["product_id"].to_pylist())
    history = [p for p in storage.list("tags/history") if p.endswith(".parquet")]
    assert len(history) == 1 and history[0].endswith("/tag-1.parquet")
    assert [p for p in storage.list() if "/." in p or p.startswith(".")] == []  # no temp/lock left

    if root.startswith("s3://"):
        import os

        secret, key_id = os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]
        logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
        assert secret not in logged
        assert key_id not in "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tagger"))
        # nothing written anywhere in the bucket (tables, card, report, taxonomy) holds either
        bucket = root.removeprefix("s3://")
        s3 = boto3.client("s3")
        for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]:
            data = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            assert secret.encode() not in data and key_id.encode() not in data, obj["Key"]


def test_cli_error_names_the_uri_not_the_credentials(s3_bucket, caplog):
    """A failing S3 run (missing bucket) logs one line naming the URI, without the secret."""
    import os

    from tagger.cli import main

    caplog.set_level(logging.DEBUG)
    rc = main(["ingest", "s3://no-such-bucket-here/catalog.csv", "--taxonomy", DEMO_TAXONOMY,
               "--lake", f"{s3_bucket}/lake"])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["Catalog s3://no-such-bucket-here/catalog.csv does not exist."]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in caplog.text


def test_local_catalog_with_images_on_s3(catalog, s3_bucket, tmp_path):
    """The image column may hold s3:// URIs next to a local export (and a missing key is a
    `missing_file` reject like a missing file)."""
    images = open_storage(f"{s3_bucket}/photos")
    for path in (catalog.parent / "images").glob("P0000*.jpg"):
        images.upload(path, path.name)
    df = pd.read_csv(catalog, dtype=str, keep_default_na=False).head(9)
    df["image"] = [f"{s3_bucket}/photos/{pid}.jpg" for pid in df["id"]]
    df.loc[8, "image"] = f"{s3_bucket}/photos/NOT-THERE.jpg"
    export = tmp_path / "export.csv"
    df.to_csv(export, index=False)
    result = ingest_catalog(str(export), DEMO_TAXONOMY, str(tmp_path / "lake"))
    assert (result.products, result.reject_reasons) == (8, {"missing_file": 1})
    products = read_products(open_storage(tmp_path / "lake")).to_pylist()
    assert products[0]["image_uri"] == f"{s3_bucket}/photos/P00001.jpg"
