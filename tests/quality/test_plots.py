"""Training curves (tagger/quality/plots.py) and their section of the report."""

import json

from catalog_schemas.card import parse_card
from tagger.quality.plots import plot_training_curves
from tagger.quality.report import render_training_curves
from tests.conftest import FIXTURES

[OLD_CARD] = (FIXTURES / "lake_v0").glob("models/*/card.json")

HISTORY = [
    dict(epoch=1, train_loss=0.9, seconds=2.0, val_loss=0.8, val_mAP=0.4, val_accuracy=0.5,
         val_attribute_accuracy={"colour": 0.5, "fit": 0.5}, weights="raw"),
    dict(epoch=2, train_loss=0.7, seconds=2.0, val_loss=0.7, val_mAP=0.6, val_accuracy=0.65,
         val_attribute_accuracy={"colour": 0.6, "fit": 0.7}, weights="ema"),
    dict(epoch=3, train_loss=0.6, seconds=2.0, val_loss=0.75, val_mAP=0.55, val_accuracy=0.6,
         val_attribute_accuracy={"colour": 0.6, "fit": 0.6}, weights="raw"),
]


def test_curves_are_a_png_for_new_and_old_histories():
    assert plot_training_curves(HISTORY)[:4] == b"\x89PNG"
    old = parse_card(OLD_CARD.read_bytes())  # epochs without validation figures
    assert plot_training_curves(old.history)[:4] == b"\x89PNG"


def test_the_report_section_names_the_registered_epoch_and_embeds_the_png():
    data = json.loads(OLD_CARD.read_text())
    card = parse_card({**data, "format": 2, "history": HISTORY, "best_epoch": 2})
    md = render_training_curves(card, "curves.png")
    assert "Epoch **2** of 3 had the highest validation mAP (0.600, ema weights)" in md
    assert "![Training curves](curves.png)" in md
    assert "last epoch's weights" in render_training_curves(parse_card(data), "curves.png")
    assert json.loads(card.to_json())["best_epoch"] == 2
    assert json.loads(card.to_json())["history"][1]["val_mAP"] == 0.6
