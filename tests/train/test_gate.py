"""The promotion gate: the comparison rule on hand-made metrics, the decision, the data it
compares on, and what a first training run leaves in the lake."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tagger.io.storage import open_storage
from tagger.lake import CARD, model_path, read_products
from tagger.model.production import GATE, MANUAL, history, production_version, promote
from tagger.model.versions import read_card
from tagger.train.gate import (
    Comparison,
    _decide,
    accuracy_rule,
    choose_evaluation_set,
    compare_metrics,
    read_gate_report,
    render_gate,
)
from tests.conftest import TINY_TRAIN


def _metrics(aps: dict[str, dict[str, float | None]], f1: float = 0.5) -> dict:
    """compute_metrics' shape with the given AP per (attribute, value)."""
    return {"macro_f1": f1,
            "per_value": {a: {v: {"ap": ap} for v, ap in vs.items()} for a, vs in aps.items()},
            "per_attribute": {a: {"macro_f1": f1} for a in aps}}


PROD = _metrics({"colour": {"red": 0.8, "blue": 0.6}, "fit": {"slim": 0.5}})


def test_not_worse_by_more_than_the_margin_passes():
    cand = _metrics({"colour": {"red": 0.79, "blue": 0.6}, "fit": {"slim": 0.6}})
    c = compare_metrics(cand, PROD, margin=0.01)
    assert c.passed and "not worse than production by more than 0.01" in c.reason
    assert [(r["attribute"], r["candidate"], r["production"], r["change"], r["values"], r["ok"])
            for r in c.rows] == [("all", 0.6633, 0.6333, 0.03, 3, True),
                                 ("colour", 0.695, 0.7, -0.005, 2, True),
                                 ("fit", 0.6, 0.5, 0.1, 1, True)]


def test_one_attribute_worse_fails_even_when_overall_is_better():
    cand = _metrics({"colour": {"red": 0.9, "blue": 0.9}, "fit": {"slim": 0.45}})
    c = compare_metrics(cand, PROD, margin=0.01)
    assert not c.passed and c.reason.endswith("fit 0.450 vs 0.500")
    assert [r["ok"] for r in c.rows] == [True, True, False]


def test_only_values_both_models_score_are_compared():
    """A value only one model has, or without an AP (no positive in the data), is left out."""
    cand = _metrics({"colour": {"red": 0.8, "blue": None, "purple": 0.1}, "neck": {"v": 0.1}})
    c = compare_metrics(cand, PROD, margin=0.0)
    assert [(r["attribute"], r["values"]) for r in c.rows] == [("all", 1), ("colour", 1)] and c.passed
    assert not compare_metrics(_metrics({"neck": {"v": 0.9}}), PROD, 0.01).passed


def test_the_table_shows_figures_and_decision():
    c = compare_metrics(_metrics({"colour": {"red": 0.7, "blue": 0.6}, "fit": {"slim": 0.5}}), PROD, 0.01)
    md = render_gate("cand", "prod", "the candidate's test split", 9, c, 0.01, "kept as a candidate")
    assert "| colour | 2 | 0.650 | 0.700 | -0.050 | 0.500 | 0.500 | **no** |" in md
    assert "| all | 3 | 0.600 | 0.633 | -0.033 |" in md
    assert md.rstrip().endswith("**Decision:** kept as a candidate") and "9 labelled products" in md


def test_the_table_shows_the_paired_bootstrap_where_there_is_one():
    from tagger.quality.compare import paired_bootstrap

    y = {"colour": np.tile([0, 1, 2], 40)}
    cand = {"colour": y["colour"].copy()}
    prod = {"colour": np.where(np.arange(120) % 4 == 0, 3, y["colour"])}  # abstains on a quarter
    c = compare_metrics(_metrics({"colour": {"red": 0.7, "blue": 0.6}}), PROD, 0.01)
    c = replace(c, bootstrap=paired_bootstrap(y, {"cand": cand, "prod": prod}, {"colour": 3}, "cand", resamples=200))
    md = render_gate("cand", "prod", "the candidate's test split", 120, c, 0.01, "promoted")
    assert ("Mean accuracy of the `single` attributes (gated on: a lead whose whole interval lies below "
            "minus the margin fails): candidate 1.000 [1.000, 1.000], "
            "production 0.750 [") in md
    assert "the candidate's lead +0.250 [+0." in md and "ahead in 100% of 200 resamples" in md
    assert "Mean accuracy" not in render_gate("cand", "prod", "x", 9, replace(c, bootstrap=None), 0.01, "kept")


def _bootstrapped(comparison: Comparison, wrong_every: int | None, n: int = 120) -> Comparison:
    """`comparison` with the paired bootstrap of a candidate that is wrong on every
    `wrong_every`-th of `n` products (None: never) against a production that is always right."""
    from tagger.quality.compare import paired_bootstrap

    y = {"colour": np.tile([0, 1, 2], n // 3)}
    wrong = np.zeros(n, bool) if wrong_every is None else np.arange(n) % wrong_every == 0
    cand = {"colour": np.where(wrong, (y["colour"] + 1) % 3, y["colour"])}
    return replace(comparison, bootstrap=paired_bootstrap(
        y, {"cand": cand, "prod": {"colour": y["colour"].copy()}}, {"colour": 3}, "cand", resamples=500))


def test_decisions_worse_beyond_luck_fail_a_candidate_whose_map_passes():
    passing = compare_metrics(PROD, PROD, margin=0.01)
    c = accuracy_rule(_bootstrapped(passing, wrong_every=4), ("cand", "prod"), 0.01)
    assert not c.passed and c.rows == passing.rows
    assert c.reason.startswith("mean accuracy of the single attributes lower than production's by more "
                               "than 0.01 beyond luck: lead -0.250 [-0.")
    # a lead these products cannot tell from luck at this margin is left to mAP
    assert accuracy_rule(_bootstrapped(passing, wrong_every=None), ("cand", "prod"), 0.01).passed
    assert accuracy_rule(_bootstrapped(passing, wrong_every=4), ("cand", "prod"), 0.3).passed
    failing = compare_metrics(_metrics({"colour": {"red": 0.5, "blue": 0.6}, "fit": {"slim": 0.5}}), PROD, 0.01)
    both = accuracy_rule(_bootstrapped(failing, wrong_every=4), ("cand", "prod"), 0.01)
    assert not both.passed and both.reason.startswith(failing.reason + "; mean accuracy")


@pytest.mark.parametrize("mode, passed, promoted", [("auto", True, True), ("manual", True, False),
                                                    ("auto", False, False)])
def test_decision(tmp_path, mode, passed, promoted):
    storage = open_storage(tmp_path / "lake")
    for v in ("v1", "v2"):
        storage.write_bytes(model_path(v, CARD), b"{}")
    promote(storage, "v1", by="ann", rule=MANUAL)
    config = TINY_TRAIN.model_copy(update={"promote": mode})
    done, decision = _decide(storage, "v2", "v1", Comparison([], passed, "why"), config, "train")
    assert done is promoted and production_version(storage) == ("v2" if promoted else "v1")
    assert ("promote: manual" in decision) is (mode == "manual")
    if promoted:
        assert (history(storage)[-1].rule, history(storage)[-1].reason) == (GATE, "why")


def test_first_training_run_promotes_its_model_and_reports_it(trained_lake):
    lake, version = trained_lake
    storage = open_storage(lake)
    assert production_version(storage) == version and history(storage)[0].rule == "first model"
    report = read_gate_report(storage, version)
    assert "promoted to production: the lake's first model" in report
    assert report in storage.read_bytes(model_path(version, "report.md")).decode()


def test_evaluation_set_first_without_catalog_products(trained_lake, catalog_dir, tmp_path):
    from tagger.model.evaluate import evaluate_model

    lake, version = trained_lake
    storage = open_storage(lake)
    card = read_card(storage, version)
    ids = read_products(storage)["product_id"].to_pylist()
    es = choose_evaluation_set(storage, ids, ids[:5], card, card)
    assert es.lake == storage.uri and len(es.products) == 5 and "same data with the same split" in es.description

    holdout = pd.read_csv(catalog_dir / "catalog.csv", dtype=str, keep_default_na=False)
    holdout.loc[:19, "id"] = "H" + holdout.loc[:19, "id"]  # 20 products the catalog does not have
    holdout.to_csv(tmp_path / "holdout.csv", index=False)
    shutil.copytree(catalog_dir / "images", tmp_path / "images")
    evaluate_model(str(lake), str(tmp_path / "holdout.csv"), model_version=version, name="spring")
    es = choose_evaluation_set(storage, ids, ids[:5], card, card)
    assert {p["product_id"][0] for p in es.products} == {"H"} and len(es.products) == 20
    assert es.description.startswith("evaluation set `spring`") and "also in the catalog left out" in es.description
