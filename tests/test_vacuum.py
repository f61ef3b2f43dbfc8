"""`tagger vacuum`: what nothing needs goes, after a grace period that keeps every file a
reader that started before may still open; --dry-run deletes nothing; bytes are counted."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from catalog_schemas.card import parse_card
from tagger.cli import main
from tagger.config import IngestConfig, TrainConfig
from tagger.ingest.run import ingest_catalog
from tagger.io.storage import open_storage, read_table
from tagger.lake import image_shard_path, read_products
from tagger.ops.vacuum import vacuum_lake
from tests.conftest import DEMO_TAXONOMY, FIXTURES

LATER = datetime.now(timezone.utc) + timedelta(days=2)


def test_a_reader_holding_the_previous_shard_list_keeps_its_shards(catalog, tmp_path):
    df = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    lake, config = tmp_path / "lake", IngestConfig(shard_size=10)
    df.head(20).to_csv(catalog, index=False)
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), config)
    storage = open_storage(lake)
    held = sorted(set(read_products(storage)["image_shard"].to_pylist()))  # a tag run starts
    df.iloc[10:30].to_csv(catalog, index=False)  # the first shard's 10 products leave the export
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), config)
    now_named = set(read_products(storage)["image_shard"].to_pylist())
    (gone,) = set(held) - now_named

    during = vacuum_lake(str(lake))  # while the reader still runs: inside the grace period
    assert during.deleted == [] and during.kept_in_grace == 1
    assert all(read_table(storage, image_shard_path(s)).num_rows == 10 for s in held)  # it reads on

    size = (lake / image_shard_path(gone)).stat().st_size
    dry = vacuum_lake(str(lake), dry_run=True, now=LATER)
    assert dry.deleted == [dict(path=image_shard_path(gone), bytes=size, why="image shard no product names")]
    assert dry.bytes_freed == size and (lake / image_shard_path(gone)).exists()
    done = vacuum_lake(str(lake), now=LATER)
    assert done.bytes_freed == size and not (lake / image_shard_path(gone)).exists()
    assert all((lake / image_shard_path(s)).exists() for s in now_named)
    assert vacuum_lake(str(lake), now=LATER).deleted == []  # nothing left to do


def test_a_failed_runs_orphan_shard_goes_after_the_grace(catalog, tmp_path):
    lake = tmp_path / "lake"
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    shard = next((lake / "catalog/images").glob("*.parquet"))
    shutil.copy(shard, shard.with_name("shard-orphan.parquet"))  # what a SIGKILLed ingest leaves
    assert vacuum_lake(str(lake)).deleted == []
    assert [d["path"] for d in vacuum_lake(str(lake), now=LATER).deleted] == [image_shard_path("shard-orphan.parquet")]


@pytest.fixture
def old_lake(tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(FIXTURES / "lake_v0", lake)
    return lake


def test_checkpoints_evaluations_and_history(old_lake):
    from tagger.train.checkpoints import checkpoint_key

    (version,) = [p.name for p in (old_lake / "models").iterdir()]
    card = parse_card((old_lake / "models" / version / "card.json").read_bytes())
    finished = checkpoint_key(TrainConfig(**card.config), card.data.snapshot)
    for path in (f"checkpoints/{finished}/last.ckpt", "checkpoints/0123456789abcdef/last.ckpt",
                 "evaluations/gone/catalog/products/products.parquet",
                 "evaluations/kept/catalog/products/products.parquet",
                 f"models/{version}/evaluations/kept/report.md"):
        (old_lake / path).parent.mkdir(parents=True, exist_ok=True)
        (old_lake / path).write_bytes(b"1234")
    history = sorted(str(p.relative_to(old_lake)) for p in (old_lake / "tags/history").rglob("*.parquet"))
    written = datetime(2026, 12, 1, 12, tzinfo=timezone.utc).timestamp()
    for p in history:  # as old as their run_date says, not the checkout's time, so the grace is not what keeps them
        os.utime(old_lake / p, (written, written))
    kept_all = vacuum_lake(str(old_lake), now=LATER)
    assert sorted((d["path"], d["why"]) for d in kept_all.deleted) == [
        (f"checkpoints/{finished}/last.ckpt", "checkpoint of a registered run"),
        ("evaluations/gone/catalog/products/products.parquet", "evaluation ingest of a deleted model version"),
    ]
    assert all((old_lake / p).exists() for p in history)  # default: the history is kept
    dated = vacuum_lake(str(old_lake), keep_history_days=3, now=datetime(2026, 12, 4, tzinfo=timezone.utc))
    assert dated.deleted == []  # run_date 2026-12-01 is within 3 days of the 4th
    pruned = vacuum_lake(str(old_lake), keep_history_days=3, now=datetime(2026, 12, 5, 1, tzinfo=timezone.utc))
    assert [d["path"] for d in pruned.deleted] == history
    assert (old_lake / "checkpoints/0123456789abcdef/last.ckpt").exists()  # a run that may resume


def test_cli_vacuum_prints_bytes_freed(old_lake, capsys):
    (old_lake / "catalog/images/shard-orphan.parquet").write_bytes(b"x" * 100)
    assert main(["vacuum", "--lake", str(old_lake), "--dry-run", "--grace-hours", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] and out["bytes_freed"] >= 100 and (old_lake / "catalog/images/shard-orphan.parquet").exists()
    assert main(["vacuum", "--lake", str(old_lake), "--grace-hours", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes_freed"] == out["bytes_freed"]
    assert not (old_lake / "catalog/images/shard-orphan.parquet").exists()
