"""SIGKILL a run at a point seen from outside (a file appearing in the lake): the previous
state stays readable (DuckDB and pandas), the next run completes without duplicates, and
training resumes from its last checkpoint. Real processes, the real CLI, no test hooks."""

from __future__ import annotations

import glob
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from tagger.config import IngestConfig
from tagger.ingest.run import ingest_catalog
from tagger.io.lock import lake_lock
from tagger.demo.sample import generate_catalog
from tagger.io.storage import open_storage
from tagger.tag.run import tag_catalog
from tests.conftest import DEMO_TAXONOMY, TINY_TRAIN

pytestmark = pytest.mark.slow


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tagger.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _kill_when(proc: subprocess.Popen, pattern: str, timeout: float = 120, more_than: int = 0) -> list[str]:
    """SIGKILL `proc` as soon as more than `more_than` files match `pattern`; returns them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = glob.glob(pattern)
        if len(found) > more_than:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return found
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {pattern} appeared:"
                                 f" {proc.stderr.read()[-2000:]}")
        time.sleep(0.002)
    proc.kill()
    raise AssertionError(f"{pattern} did not appear within {timeout}s")


def _run(*args: str) -> str:
    proc = _start(*args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def _sql(query: str) -> list[tuple]:
    return duckdb.sql(query).fetchall()


def test_kill_during_image_shard_writing(tmp_path):
    export = generate_catalog(tmp_path / "export", n_products=240, seed=2, image_size=64)
    lake = tmp_path / "lake"
    df = pd.read_csv(export, dtype=str, keep_default_na=False)
    first = tmp_path / "export" / "first.csv"
    df.head(20).to_csv(first, index=False)
    ingest_catalog(str(first), DEMO_TAXONOMY, str(lake), IngestConfig(shard_size=10))
    products = lake / "catalog/products/products.parquet"
    before = pq.read_table(products)
    shards_before = set(glob.glob(f"{lake}/catalog/images/*.parquet"))

    (tmp_path / "ingest.yaml").write_text("shard_size: 10\nworkers: 2\n")
    proc = _start("ingest", str(export), "--taxonomy", DEMO_TAXONOMY, "--lake", str(lake),
                  "--config", str(tmp_path / "ingest.yaml"))
    # kill while shards are being written: after the first new one is committed
    _kill_when(proc, f"{lake}/catalog/images/*.parquet", more_than=len(shards_before))
    assert proc.returncode == -signal.SIGKILL

    # the previous state, whole, for pandas and DuckDB; every visible shard is complete
    assert pq.read_table(products).equals(before)
    assert len(pd.read_parquet(products)) == 20
    assert _sql(f"SELECT count(*) FROM '{products}'") == [(20,)]
    n_images = _sql(f"SELECT count(*) FROM '{lake}/catalog/images/*.parquet'")[0][0]
    assert n_images >= 20
    with lake_lock(open_storage(lake), "catalog", owner="check", wait=0):
        pass  # the kernel dropped the killed run's lock: nothing to clean up by hand

    # the next run completes: every product once, every image once, every shard readable
    result = json.loads(_run("ingest", str(export), "--taxonomy", DEMO_TAXONOMY, "--lake", str(lake),
                             "--config", str(tmp_path / "ingest.yaml")))
    assert (result["products"], result["rejected"]) == (240, 3)
    assert _sql(f"SELECT count(*), count(DISTINCT product_id) FROM '{products}'") == [(240, 240)]
    dup = _sql(f"SELECT image_hash FROM '{lake}/catalog/images/*.parquet' GROUP BY 1 HAVING count(*) > 1")
    assert dup == []
    missing = _sql(f"""SELECT count(*) FROM '{products}' p ANTI JOIN
                       (SELECT image_hash, parse_filename(filename) AS shard
                        FROM read_parquet('{lake}/catalog/images/*.parquet', filename = true)) i
                       ON p.image_hash = i.image_hash AND p.image_shard = i.shard""")
    assert missing == [(0,)]


def _train_args(lake: Path, epochs: int) -> list[str]:
    c = TINY_TRAIN
    return ["train", "--lake", str(lake), "--backbone", c.backbone, "--image-size", str(c.image_size),
            "--epochs", str(epochs), "--batch-size", str(c.batch_size), "--lr", str(c.lr),
            "--no-pretrained", "--workers", "0"]


def test_kill_during_training_then_resume_from_the_checkpoint(catalog, tmp_path):
    lake = tmp_path / "lake"
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    proc = _start(*_train_args(lake, epochs=4))
    (ckpt,) = _kill_when(proc, f"{lake}/checkpoints/*/last.ckpt", timeout=240)
    assert proc.returncode == -signal.SIGKILL
    assert not glob.glob(f"{lake}/models/*/card.json")  # no half-registered version
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # whole and data-only
    done = json.loads(state["history"])
    assert 1 <= len(done) < 4

    proc = _start(*_train_args(lake, epochs=4), "--resume")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert f"resumed from epoch {len(done)}" in err
    (card,) = glob.glob(f"{lake}/models/*/card.json")
    history = json.loads(Path(card).read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[: len(done)] == done  # the killed run's epochs were kept, not redone
    assert not glob.glob(f"{lake}/checkpoints/*/last.ckpt")  # cleaned up after registering


def test_kill_during_tag_writing(trained_lake):
    lake, version = trained_lake
    tag_catalog(str(lake), model_version=version, run_id="tag-1")
    latest = lake / "tags/latest/tags.parquet"
    before = pq.read_table(latest)

    proc = _start("tag", "--lake", str(lake), "--model", version, "--run-id", "tag-2", "--full")
    _kill_when(proc, f"{lake}/tags/history/*/tag-2.parquet", timeout=240)
    assert proc.returncode == -signal.SIGKILL

    # latest is the old snapshot or the new one, never a mix; history files are whole
    now = pq.read_table(latest)
    assert now.equals(before) or set(now["run_id"].to_pylist()) == {"tag-2"}
    assert _sql(f"SELECT count(*) FROM '{latest}'") == [(len(now),)]
    runs = _sql(f"""SELECT run_id, count(*) FROM read_parquet('{lake}/tags/history/*/*.parquet',
                    hive_partitioning = true) GROUP BY 1 ORDER BY 1""")
    assert [r for r, _ in runs] == ["tag-1", "tag-2"]

    # the re-run with the same run id replaces its own output: no duplicates anywhere
    tag_catalog(str(lake), model_version=version, run_id="tag-2", full=True)  # no lock left either
    assert _sql(f"""SELECT count(*) FROM (SELECT product_id, attribute, value FROM '{latest}'
                    GROUP BY ALL HAVING count(*) > 1)""") == [(0,)]
    assert _sql(f"SELECT DISTINCT run_id FROM '{latest}'") == [("tag-2",)]
    history = sorted(Path(p).name for p in glob.glob(f"{lake}/tags/history/*/*.parquet"))
    assert history == ["tag-1.parquet", "tag-2.parquet"]
    rows = _sql(f"SELECT count(*) FROM '{lake}/tags/history/*/tag-2.parquet'")[0][0]
    assert rows == len(pd.read_parquet(latest))


def test_kill_during_ingest_on_s3_and_the_rerun_takes_over_the_dead_lock(s3_bucket, tmp_path):
    """Lake on S3: the killed run leaves its lock object behind; the next run on this host
    sees that its process is gone and takes the lock over at once."""
    export = generate_catalog(tmp_path / "export", n_products=120, seed=2, image_size=64)
    exports = open_storage(f"{s3_bucket}/exports")
    for path in export.parent.rglob("*"):
        if path.is_file():
            exports.upload(path, path.relative_to(export.parent).as_posix())
    lake = open_storage(f"{s3_bucket}/lake")
    config = tmp_path / "ingest.yaml"
    config.write_text("shard_size: 10\nworkers: 2\n")
    args = ("ingest", f"{s3_bucket}/exports/catalog.csv", "--taxonomy", DEMO_TAXONOMY,
            "--lake", lake.uri, "--config", str(config))
    proc = _start(*args)
    deadline = time.monotonic() + 120
    while not lake.list("catalog/images"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)

    assert not lake.exists("catalog/products/products.parquet")
    assert lake.exists(".locks/catalog.json")  # left behind by the killed run
    for shard in lake.list("catalog/images"):  # every visible shard is whole
        assert pq.read_table(io.BytesIO(lake.read_bytes(shard))).num_rows > 0

    result = json.loads(_run(*args))  # TAGGER_LOCK_WAIT_S unset: no waiting
    assert (result["products"], result["rejected"]) == (120, 3)
    hashes = [h for s in lake.list("catalog/images")
              for h in pq.read_table(io.BytesIO(lake.read_bytes(s)))["image_hash"].to_pylist()]
    assert len(hashes) == len(set(hashes)) == 120
    assert not lake.exists(".locks/catalog.json")
