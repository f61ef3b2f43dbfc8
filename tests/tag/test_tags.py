import shutil
from datetime import date

import duckdb
import pandas as pd
import pytest

from tagger.ingest.run import ingest_catalog
from tagger.lake import read_products
from tagger.model.versions import ModelNotFound, read_card
from tagger.io.storage import open_storage
from tagger.tag.run import tag_catalog
from tests.conftest import DEMO_TAXONOMY

pytestmark = pytest.mark.slow


def _latest(lake) -> pd.DataFrame:
    return duckdb.sql(f"SELECT * FROM '{lake}/tags/latest/*.parquet'").df()


def _history(lake) -> pd.DataFrame:
    return duckdb.sql(
        f"SELECT * FROM read_parquet('{lake}/tags/history/*/*.parquet', hive_partitioning = true)"
    ).df()


def test_tag_tables_follow_the_rules(trained_lake):
    lake, version = trained_lake
    result = tag_catalog(str(lake), run_date=date(2026, 1, 2), run_id="r1")
    assert (result.tagged, result.products, result.model_version) == (60, 60, version)
    latest, history = _latest(lake), _history(lake)
    assert len(latest) == len(history) == result.latest_rows > 0
    assert set(history["run_date"].astype(str)) == {"2026-01-02"}
    assert set(latest["run_id"]) == {"r1"} and set(latest["model_version"]) == {version}
    products = {p["product_id"]: p for p in read_products(open_storage(lake)).to_pylist()}
    card = read_card(open_storage(lake), version)
    # curated labels win and are never replaced by predictions
    for pid, p in products.items():
        for attr, values in p["labels"]:
            rows = latest[(latest.product_id == pid) & (latest.attribute == attr)]
            assert sorted(rows.value) == sorted(values), (pid, attr)
            assert set(rows.source) <= {"curated"} and rows.score.isna().all()
    model = latest[latest.source == "model"]
    assert len(model) > 0
    # every predicted tag passed its threshold; single attributes emit at most one value
    for row in model.itertuples():
        assert row.score >= card.thresholds[row.attribute][row.value] - 1e-6
    singles = latest[latest.attribute.isin(["article_type", "colour", "pattern", "sleeve_length"])]
    assert singles.groupby(["product_id", "attribute"]).size().max() == 1
    # sleeve_length does not apply to bottoms and bags
    no_sleeves = {pid for pid, p in products.items() if p["category"] in ("bottoms", "bags")}
    assert not set(latest[latest.attribute == "sleeve_length"].product_id) & no_sleeves


def test_rerun_same_run_id_adds_no_duplicates(trained_lake):
    lake, _ = trained_lake
    first = tag_catalog(str(lake), run_id="same", run_date=date(2026, 1, 2))
    again = tag_catalog(str(lake), run_id="same", run_date=date(2026, 1, 3), full=True)
    history = _history(lake)
    assert len(history) == again.history_rows == first.history_rows
    assert set(history["run_date"].astype(str)) == {"2026-01-03"}
    assert len(_latest(lake)) == first.latest_rows


def test_incremental_runs_tag_only_what_changed(trained_lake, catalog_dir, tmp_path):
    lake, _ = trained_lake
    tag_catalog(str(lake), run_id="night1")
    before = _latest(lake)
    second = tag_catalog(str(lake), run_id="night2")
    assert second.tagged == 0 and second.history_rows == 0
    pd.testing.assert_frame_equal(_latest(lake), before)

    df = pd.read_csv(catalog_dir / "catalog.csv", dtype=str, keep_default_na=False)
    target = df.index[(df.id == "P00005")][0]
    df.loc[target, "colour"] = "green" if df.loc[target, "colour"] != "green" else "blue"
    df = df[df.id != "P00006"]
    (tmp_path / "c").mkdir()
    df.to_csv(tmp_path / "c" / "catalog.csv", index=False)
    shutil.copytree(catalog_dir / "images", tmp_path / "c" / "images")
    ingest_catalog(str(tmp_path / "c" / "catalog.csv"), DEMO_TAXONOMY, str(lake))
    third = tag_catalog(str(lake), run_id="night3")
    assert (third.tagged, third.removed) == (1, 1)
    latest = _latest(lake)
    assert "P00006" not in set(latest.product_id)
    colour = latest[(latest.product_id == "P00005") & (latest.attribute == "colour")]
    assert list(colour.value) == [df.loc[target, "colour"]] and list(colour.run_id) == ["night3"]
    unchanged = latest[~latest.product_id.isin(["P00005"])]
    assert set(unchanged.run_id) == {"night1"}
    assert len(_history(lake)) == len(before) + third.history_rows


def test_unknown_model_version_lists_known(trained_lake):
    lake, version = trained_lake
    with pytest.raises(ModelNotFound, match=f"No model version 'nope'.*Known: {version}"):
        tag_catalog(str(lake), model_version="nope")
