"""Precision targets: auto-publish thresholds, the needs-review band in the tag tables,
temperature scaling and EMA recorded on the card."""

from datetime import date

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from tagger.config import TrainConfig
from tagger.ingest.run import ingest_catalog
from tagger.model.versions import read_card
from tagger.io.storage import open_storage
from tagger.lake import read_latest
from tagger.tag.run import tag_catalog
from tagger.train.loop import create_ema
from tagger.train.register import choose_thresholds
from tagger.train.run import train_model
from tests.conftest import DEMO_TAXONOMY, TINY_TRAIN


def test_choose_thresholds_fixed_and_with_a_precision_target():
    rng = np.random.default_rng(0)
    targets = (rng.random((400, 3)) < 0.3).astype(np.float32)
    scores = np.clip(targets * 0.5 + rng.random((400, 3)) * 0.6, 0, 1).astype(np.float32)
    mask = np.ones_like(targets, dtype=bool)
    fixed, auto = choose_thresholds(TrainConfig(thresholds="fixed", fixed_threshold=0.4), scores, targets, mask)
    assert fixed.tolist() == pytest.approx([0.4] * 3) and auto is None
    best, _ = choose_thresholds(TrainConfig(), scores, targets, mask)
    emit, auto = choose_thresholds(TrainConfig(min_precision=0.9), scores, targets, mask)
    assert np.all(emit == np.minimum(best, auto))
    for k in range(3):  # the auto-publish cut really is 90% precise on this data
        accepted = scores[:, k] >= auto[k]
        assert targets[accepted, k].mean() >= 0.9


def test_no_ema_without_a_decay():
    import torch

    assert create_ema(torch.nn.Linear(2, 2), TrainConfig(ema_decay=None)) is None
    assert TrainConfig(ema_decay="").ema_decay is None  # an emptied form field in the UI


@pytest.mark.slow
def test_precision_target_routes_low_scores_to_review(catalog_dir, tmp_path):
    lake = str(tmp_path / "lake")
    ingest_catalog(str(catalog_dir / "catalog.csv"), DEMO_TAXONOMY, lake)
    version = train_model(lake, TINY_TRAIN.model_copy(update=dict(min_precision=0.8)))
    card = read_card(open_storage(lake), version)
    outputs = [(a, v) for a, vals in card.thresholds.items() for v in vals]
    assert card.min_precision == 0.8
    assert {(a, v) for a, vals in card.auto_thresholds.items() for v in vals} == set(outputs)
    for a, v in outputs:
        auto = card.auto_thresholds[a][v]
        assert auto is None or card.thresholds[a][v] <= auto + 1e-6
    assert set(card.temperature) == set(card.thresholds)
    assert all(0.05 <= t <= 20 for t in card.temperature.values())
    assert card.ema.registered in ("ema", "raw")
    calibration, review = card.metrics["calibration"], card.metrics["review"]
    assert 0 <= calibration["ece_after"] <= 1 and 0 <= calibration["ece_before"] <= 1
    assert review["auto_share"] + review["review_share"] == pytest.approx(1.0)

    tag_catalog(lake, run_date=date(2026, 1, 2), run_id="r1")
    latest = duckdb.sql(f"SELECT * FROM '{lake}/tags/latest/*.parquet'").df()
    model = latest[latest.source == "model"]
    expected = [row.score < (card.auto_thresholds[row.attribute][row.value] or np.inf)
                for row in model.itertuples()]
    assert model.needs_review.tolist() == expected
    assert not latest[latest.source == "curated"].needs_review.any()

    # A latest table written before the column existed is read as published tags.
    path = f"{lake}/tags/latest/tags.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["needs_review"]), path)
    upgraded = read_latest(open_storage(lake))
    assert upgraded.num_rows == len(latest) and not any(upgraded["needs_review"].to_pylist())
