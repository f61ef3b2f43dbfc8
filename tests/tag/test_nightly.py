"""The nightly run in one process (tagger.nightly): each new image decoded once, and the same
tags as `tagger ingest` + `tagger tag` within NIGHTLY_SCORE_TOL."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

import tagger.data.images
import tagger.model.scoring
from tagger.config import TagConfig
from tagger.ingest.run import ingest_catalog
from tagger.io.storage import open_storage
from tagger.lake import read_products
from tagger.model.scoring import ImageScorer
from tagger.nightly import NIGHTLY_SCORE_TOL, HeldImages, run_nightly
from tagger.tag.run import tag_catalog
from tests.conftest import DEMO_TAXONOMY, ROOT

pytestmark = pytest.mark.slow

CONFIG = TagConfig(runtime="onnx", workers=2, batch_size=16)


def _add_products(catalog: Path, n: int, *, seed: int, side: int) -> list[str]:
    """n new products with new photos of side x side px, appended to the catalog."""
    from tagger.demo.sample import generate_catalog

    extra = generate_catalog(catalog.parent / f"extra-{seed}", n_products=n, seed=seed,
                             image_size=side, bad_rows=False)
    old = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    new = pd.read_csv(extra, dtype=str, keep_default_na=False)
    new["id"] = [f"N{seed}-{pid}" for pid in new["id"]]
    for pid, image in zip(new["id"], new["image"]):
        shutil.copy(extra.parent / image, catalog.parent / "images" / f"{pid}.jpg")
    new["image"] = [f"images/{pid}.jpg" for pid in new["id"]]
    pd.concat([old, new[old.columns]]).to_csv(catalog, index=False)
    return list(new["id"])


class _Decodes:
    """Counts decodes of source photos (decode_image; those that gave an image: the
    catalog's broken image is tried, and rejected, every night) and of stored JPEGs (load_rgb)."""

    def __init__(self, monkeypatch):
        self.source = self.stored = 0
        decode, load = tagger.data.images.decode_image, tagger.model.scoring.load_rgb

        def counted_decode(*a, **kw):
            image = decode(*a, **kw)
            self.source += 1
            return image

        def counted_load(*a, **kw):
            self.stored += 1
            return load(*a, **kw)

        monkeypatch.setattr(tagger.data.images, "decode_image", counted_decode)
        monkeypatch.setattr(tagger.model.scoring, "load_rgb", counted_load)


@pytest.fixture
def two_lakes(trained_lake, catalog, tmp_path):
    """The trained lake twice (one for the nightly run, one for ingest + tag) and a catalog
    with 12 new products whose 500 px photos are stored resized (> 380 px)."""
    lake, version = trained_lake
    other = tmp_path / "lake-b"
    shutil.copytree(lake, other)
    new = _add_products(catalog, 12, seed=7, side=500)
    return str(lake), str(other), version, catalog, new


def test_nightly_decodes_each_new_image_once(two_lakes, monkeypatch):
    nightly_lake, plain_lake, version, catalog, new = two_lakes
    decodes = _Decodes(monkeypatch)
    night = run_nightly(str(catalog), DEMO_TAXONOMY, nightly_lake, tag_config=CONFIG, tag_run_id="n1")
    # 60 products tagged for the first time, 12 of them new: the new ones' photos are
    # decoded once, by ingest; the 60 that were ingested before are read from their shards
    assert (night.ingest.new, night.tag.tagged, night.held_images) == (12, 72, 12)
    assert (decodes.source, decodes.stored) == (12, 60)

    decodes.source = decodes.stored = 0
    ingest_catalog(str(catalog), DEMO_TAXONOMY, plain_lake)
    tag_catalog(plain_lake, config=CONFIG, run_id="n1")
    assert (decodes.source, decodes.stored) == (12, 72)  # ingest + tag: the new ones twice

    decodes.source = decodes.stored = 0  # a re-run: nothing new, nothing to tag or decode
    again = run_nightly(str(catalog), DEMO_TAXONOMY, nightly_lake, tag_config=CONFIG)
    assert (again.ingest.new, again.tag.tagged, again.held_images) == (0, 0, 0)
    assert (decodes.source, decodes.stored) == (0, 0)


def test_nightly_tags_equal_ingest_then_tag(two_lakes):
    nightly_lake, plain_lake, version, catalog, new = two_lakes
    run_nightly(str(catalog), DEMO_TAXONOMY, nightly_lake, tag_config=CONFIG, tag_run_id="same")
    ingest_catalog(str(catalog), DEMO_TAXONOMY, plain_lake)
    tag_catalog(plain_lake, config=CONFIG, run_id="same")

    # Scores of the new products: held images (the pixels ingest encoded) against their
    # stored JPEGs, through one scorer
    storage = open_storage(plain_lake)
    products = [p for p in read_products(storage).to_pylist() if p["product_id"] in set(new)]
    shards, hashes = [p["image_shard"] for p in products], [p["image_hash"] for p in products]
    scorer = ImageScorer.of_version(storage, version, CONFIG)
    held = HeldImages(scorer.size)
    seen = []
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(Path(plain_lake).parent / "lake-c"),
                   on_image=lambda h, px: (seen.append(h), held.add(h, px)))
    assert set(hashes) <= set(seen)
    texts = [p["text"] for p in products]
    from_memory = scorer.score(plain_lake, shards, hashes, desc="held", images=held, texts=texts).scores
    from_shards = scorer.score(plain_lake, shards, hashes, desc="stored", texts=texts).scores
    diff = np.abs(from_memory - from_shards)
    assert 0 < diff.max() <= NIGHTLY_SCORE_TOL  # not the same pixels (JPEG loss), close scores

    # The tables: the same rows; a decision may flip only where a score is within the
    # tolerance of its threshold
    cols = "product_id, attribute, value, source, score, needs_review"
    a = duckdb.sql(f"SELECT {cols} FROM '{nightly_lake}/tags/latest/*.parquet'").df()
    b = duckdb.sql(f"SELECT {cols} FROM '{plain_lake}/tags/latest/*.parquet'").df()
    key = ["product_id", "attribute", "value", "source"]
    both = a.merge(b, on=key, how="outer", suffixes=("_n", "_p"), indicator=True)
    assert len(both) > 0 and (both["_merge"] == "both").mean() > 0.95
    model = both[(both["source"] == "model") & (both["_merge"] == "both")]
    assert (model["score_n"] - model["score_p"]).abs().max() <= NIGHTLY_SCORE_TOL
    old = ~both["product_id"].isin(new)  # not decoded tonight: read from shards both ways
    assert (both[old]["_merge"] == "both").all()
    assert (both[old & (both["source"] == "model")].eval("abs(score_n - score_p)") <= 1e-6).all()
    from tagger.model.versions import read_card

    card = read_card(storage, version)
    for row in both[both["_merge"] != "both"].itertuples():
        score = row.score_n if row._merge == "left_only" else row.score_p
        assert abs(score - card.thresholds[row.attribute][row.value]) <= NIGHTLY_SCORE_TOL, row


def test_held_images_are_bounded_and_fitted():
    held = HeldImages(8, max_bytes=8 * 8 * 3 * 2)
    for k in range(3):
        held.add(f"h{k}", np.zeros((20, 10, 3), np.uint8))
    held.add("h0", np.zeros((20, 10, 3), np.uint8))  # the same image twice: held once
    assert sorted(held) == ["h0", "h1"] and held.over_limit == 1 and held.bytes == 384
    x = held["h0"]
    assert x.shape == (8, 8, 3) and (x[:, :2] == 255).all() and (x[:, 2:6] == 0).all()


def test_tagging_with_a_cached_export_imports_no_torch(trained_lake):
    """The CLI's tag run, in a fresh process, once the model's export is cached: no torch,
    no timm (nor scikit-learn) imported, and the same tags as a run that exported."""
    lake, version = trained_lake
    first = tag_catalog(str(lake), config=CONFIG, run_id="export")  # exports (torch) here
    code = (
        "import sys\n"
        "from tagger.cli import main\n"
        f"assert main(['tag', '--lake', {str(lake)!r}, '--full', '--runtime', 'onnx', "
        "'--batch-size', '16', '--run-id', 'cached']) == 0\n"
        "print(sorted(m for m in ('torch', 'timm', 'sklearn', 'albumentations') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    rows = {run: duckdb.sql(f"SELECT product_id, attribute, value, source, score FROM read_parquet("
                            f"'{lake}/tags/history/*/{run}.parquet') ORDER BY ALL").fetchall()
            for run in ("export", "cached")}
    assert first.tagged == 60 and len(rows["cached"]) == len(rows["export"]) > 0
    for a, b in zip(rows["export"], rows["cached"]):
        assert a[:4] == b[:4] and (a[4] is None) == (b[4] is None)
        assert a[4] is None or abs(a[4] - b[4]) <= 1e-6
