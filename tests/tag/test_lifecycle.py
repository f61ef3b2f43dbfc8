"""Tag runs follow production: a worse retrain stays a candidate and changes no tag, a
promotion re-tags on the next run, a rollback brings the previous version's tags back; and a
catalog taxonomy the model does not match is reported."""

from __future__ import annotations

import logging

import pytest

from catalog_schemas.taxonomy import load_taxonomy
from tagger.io.storage import open_storage
from tagger.lake import TAXONOMY_PATH, read_lake_taxonomy, read_latest
from tagger.model.production import history, production_version, promote_version
from tagger.tag.drift import compute_taxonomy_drift
from tagger.tag.run import tag_catalog
from tagger.train.gate import read_gate_report
from tests.conftest import TINY_TRAIN

pytestmark = pytest.mark.slow

# Deliberately worse: random init, one epoch at a learning rate that leaves it untrained.
WORSE_TRAIN = TINY_TRAIN.model_copy(update=dict(epochs=1, lr=1e-6))
# The production model it is measured against: trained long enough to beat chance clearly
# (test mAP 0.54 vs the untrained 0.42 here; the session fixture's 2-epoch model is at chance).
GOOD_TRAIN = TINY_TRAIN.model_copy(update=dict(epochs=10, promote="manual"))


def _tags(lake) -> list[tuple]:
    return sorted((r["product_id"], r["attribute"], r["value"], r["source"], r["model_version"])
                  for r in read_latest(open_storage(lake)).to_pylist())


def test_production_decides_what_tags(trained_lake):
    from tagger.train.run import train_model

    lake, fixture_model = trained_lake
    storage = open_storage(lake)
    assert production_version(storage) == fixture_model  # the lake's first model, promoted by training
    first = train_model(str(lake), GOOD_TRAIN)
    assert production_version(storage) == fixture_model  # promote: manual registers a candidate
    promote_version(storage, first, by="ann", reason="the trained one")
    assert tag_catalog(str(lake), run_id="n1").model_version == first
    tags_first = _tags(lake)

    worse = train_model(str(lake), WORSE_TRAIN)
    assert production_version(storage) == first
    report = read_gate_report(storage, worse)
    assert "kept as a candidate" in report
    # beside the mAP gate, how far these few products can tell the two apart
    assert "Mean accuracy of the `single` attributes (gated on: a lead whose whole interval" in report
    assert "resamples of these products" in report
    night = tag_catalog(str(lake), run_id="n2")
    assert (night.model_version, night.tagged) == (first, 0) and _tags(lake) == tags_first

    promote_version(storage, worse, by="ann", reason="try it")
    night = tag_catalog(str(lake), run_id="n3")
    assert (night.model_version, night.tagged) == (worse, 60)
    assert {t[4] for t in _tags(lake)} == {worse} and _tags(lake) != tags_first

    back = promote_version(storage, first, by="ann", reason="worse tags")
    night = tag_catalog(str(lake), run_id="n4")
    assert (night.model_version, night.tagged) == (first, 60) and _tags(lake) == tags_first
    assert back.rule == "rollback"
    assert [p.version for p in history(storage)] == [fixture_model, first, worse, first]


def test_drift_names_what_the_model_cannot_predict():
    model = load_taxonomy("""
name: t
attributes:
  - {name: colour, kind: single, values: [red, blue]}
  - {name: fit, kind: single, values: [slim, loose]}
""")
    catalog = load_taxonomy("""
name: t
attributes:
  - {name: colour, kind: single, values: [red, blue, purple]}
  - {name: neck, kind: single, values: [v, round]}
""")
    drift = compute_taxonomy_drift(catalog, model)
    assert drift["model_lacks"] == {"colour": ["purple"], "neck": ["round", "v"]}
    assert drift["catalog_lacks"] == {"fit": ["loose", "slim"]}
    assert "never predict colour: purple; neck: round, v" in drift["warning"]
    assert compute_taxonomy_drift(model, model) == {"model_lacks": {}, "catalog_lacks": {}, "warning": ""}


def test_tag_run_warns_about_taxonomy_drift(trained_lake, caplog):
    lake, version = trained_lake
    storage = open_storage(lake)
    tax = read_lake_taxonomy(storage).to_dict()
    colour = next(a for a in tax["attributes"] if a["name"] == "colour")
    colour["values"].append("purple")  # the catalog gained a value after the model was trained
    storage.write_bytes(TAXONOMY_PATH, load_taxonomy(tax).model_dump_json().encode())
    with caplog.at_level(logging.WARNING, logger="tagger.tag.run"):
        result = tag_catalog(str(lake), run_id="drift")
    assert result.model_version == version and result.tagged == 60  # tagging goes on
    assert result.drift["model_lacks"] == {"colour": ["purple"]} and result.drift["catalog_lacks"] == {}
    assert "can never predict colour: purple" in result.to_dict()["drift"]["warning"]
    assert "can never predict colour: purple" in caplog.text
