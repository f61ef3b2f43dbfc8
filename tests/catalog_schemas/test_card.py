"""The model card contract (catalog_schemas/card.py): validated on read, clear errors for a
newer, foreign or broken card, and one function from a card to the arrays scoring needs."""

import json
import shutil

import numpy as np
import pytest

from catalog_schemas.card import CARD_FORMAT, CardError, ModelCard, parse_card
from tagger.io.storage import open_storage
from tagger.labels import values_from_vector, vector_from_values
from tagger.model.scoring import card_arrays
from tagger.model.versions import read_card
from tests.conftest import FIXTURES

OLD_LAKE = FIXTURES / "lake_v0"
[OLD_CARD] = OLD_LAKE.glob("models/*/card.json")


def _old() -> dict:
    return json.loads(OLD_CARD.read_text())


def test_a_card_written_before_the_format_field_reads_as_format_1():
    card = parse_card(OLD_CARD.read_bytes())
    assert card.format == 1 and CARD_FORMAT == 7
    assert card.head == "sigmoid"  # cards before format 2 have sigmoid scores
    assert card.tta == "none"  # cards before format 3 score one pass per image
    assert card.inputs == "image" and card.text is None  # cards before format 4 read images only
    assert card.image_pooling == "first"  # cards before format 5 were tuned on one image
    assert card.prior_shift == {}  # cards before format 6 decide as trained
    assert card.image_weight == {} and set(card.image_weight_vector()) == {1.0}  # before 7: the whole photo
    assert card.ema is not None and card.ema.registered in ("raw", "ema")
    assert card.data_config.image_size == card.image_size == 32
    assert card.taxonomy.name == "demo"


def test_writing_a_card_keeps_every_field_it_was_read_with():
    """Round trip: what an old card holds is written back unchanged (plus the fields added
    since, at the values that mean what the old card meant)."""
    old = _old()
    again = json.loads(parse_card(old).to_json())
    assert again.pop("format") == 1
    assert again.pop("head") == "sigmoid"
    assert again.pop("test_metrics", None) is None
    assert again["data"].pop("test", 0) == 0
    assert again == old


def test_format_2_cards_say_their_head_and_older_formats_cannot_hold_softmax():
    data = _old()
    data.update(format=2, head="softmax")
    card = parse_card(json.dumps(data))
    assert card.format == 2 and card.head == "softmax"
    assert json.loads(card.to_json())["head"] == "softmax"
    assert card_arrays(card).softmax_slices == tuple(
        sl for a, sl in card.taxonomy.slices.items() if card.taxonomy.attribute(a).kind == "single")
    assert card_arrays(parse_card(_old())).softmax_slices == ()
    data["format"] = 1
    with pytest.raises(CardError, match="head 'softmax' needs card format 2"):
        parse_card(json.dumps(data))
    # a card built now (training) is format 2; the same fields read from card.json are format 1
    assert "format" not in _old() and ModelCard.model_validate(_old()).format == CARD_FORMAT


def test_format_3_cards_say_their_tta_and_older_formats_cannot_hold_flip():
    data = _old()
    data.update(format=3, tta="flip")
    card = parse_card(json.dumps(data))
    assert card.format == 3 and card.tta == "flip"
    assert json.loads(card.to_json())["tta"] == "flip"
    assert parse_card(card.to_json()) == card
    # none is what a card without the field means: not written, so old cards round-trip
    data["tta"] = "none"
    assert "tta" not in json.loads(parse_card(data).to_json())
    data.update(format=2, tta="flip")
    with pytest.raises(CardError, match="tta 'flip' needs card format 3 or later, the card says 2"):
        parse_card(json.dumps(data))
    data.update(format=3, tta="rotate")
    with pytest.raises(CardError, match="tta: Input should be 'none' or 'flip'"):
        parse_card(json.dumps(data))
    data.update(format=4, tta="none", image_pooling="mean")
    with pytest.raises(CardError, match="image_pooling 'mean' needs card format 5 or later, the card says 4"):
        parse_card(json.dumps(data))


@pytest.mark.parametrize("change, match", [
    (lambda c: c.update(format=CARD_FORMAT + 1), "newer than this product-tagger reads"),
    (lambda c: c.pop("thresholds"), "lacks thresholds: not a model card of product-tagger"),
    (lambda c: c.update(surprise=1), "surprise: Extra inputs are not permitted"),
    (lambda c: c["thresholds"]["colour"].pop("red"), "thresholds lack colour=red"),
    (lambda c: c["data_config"].update(mean=[0.5]), "data_config.mean"),
])
def test_a_bad_card_is_refused_saying_what_is_wrong(change, match):
    card = _old()
    change(card)
    with pytest.raises(CardError, match=match):
        parse_card(json.dumps(card), "lake/models/x/card.json")


def test_a_card_that_is_not_json_or_not_an_object_is_refused():
    with pytest.raises(CardError, match="is not JSON"):
        parse_card(b'{"version": "x"', "x/card.json")
    with pytest.raises(CardError, match="not a JSON object"):
        parse_card(b"[1, 2]", "x/card.json")


def test_read_card_validates(tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(OLD_LAKE, lake)
    card_file = next(lake.glob("models/*/card.json"))
    version = card_file.parent.name
    assert isinstance(read_card(open_storage(lake), version), ModelCard)
    card_file.write_text(json.dumps({"version": version, "hello": "world"}))
    with pytest.raises(CardError, match=f"{card_file}.*lacks"):
        read_card(open_storage(lake), version)


def test_card_arrays_follow_the_taxonomy_order_not_the_file_order():
    card = parse_card(OLD_CARD.read_bytes())
    data = _old()
    # the same thresholds, written in reverse order: matched by name, never by position
    data["thresholds"] = {a: dict(reversed(list(v.items()))) for a, v in reversed(list(data["thresholds"].items()))}
    arrays, again = card_arrays(card), card_arrays(parse_card(data))
    expected = np.array([card.thresholds[a][v] for a, v in card.taxonomy.outputs], dtype=np.float32)
    assert np.array_equal(arrays.thresholds, expected) and np.array_equal(again.thresholds, expected)
    # auto-publish: None in the card (never auto) is +inf
    auto = [card.auto_thresholds[a][v] for a, v in card.taxonomy.outputs]
    assert np.array_equal(np.isinf(arrays.auto_thresholds), [x is None for x in auto])
    # one temperature per attribute, repeated over its values
    for attr, sl in card.taxonomy.slices.items():
        assert np.allclose(arrays.temperature[sl], card.temperature[attr])


def test_a_card_without_targets_or_temperatures_has_no_auto_thresholds_and_unit_temperatures():
    data = _old()
    data.update(auto_thresholds=None, min_precision=None, temperature={}, ema={})
    card = parse_card(data)
    arrays = card_arrays(card)
    assert card.ema is None and arrays.auto_thresholds is None
    assert np.array_equal(arrays.temperature, np.ones(card.taxonomy.num_outputs, dtype=np.float32))


def test_vectors_and_tables_are_inverse():
    card = parse_card(OLD_CARD.read_bytes())
    tax = card.taxonomy
    v = np.linspace(0.1, 0.9, tax.num_outputs).astype(np.float32)
    v[3] = np.inf
    table = values_from_vector(tax, v)
    assert table[tax.outputs[3][0]][tax.outputs[3][1]] is None
    assert np.allclose(vector_from_values(tax, table), v)
    with pytest.raises(ValueError, match="no entry for"):
        vector_from_values(tax, {"colour": {}})


def test_format_6_cards_say_their_prior_shift_and_older_formats_cannot_hold_one():
    data = _old()
    data.update(format=6, prior_shift={"colour": 0.5})
    card = parse_card(json.dumps(data))
    assert card.prior_shift == {"colour": 0.5}
    assert json.loads(card.to_json())["prior_shift"] == {"colour": 0.5}
    with pytest.raises(CardError, match="prior_shift needs card format 6 or later, the card says 5"):
        parse_card(json.dumps({**data, "format": 5}))
    with pytest.raises(CardError, match="not single attributes"):
        parse_card(json.dumps({**data, "prior_shift": {"nope": 0.5}}))


def test_format_7_cards_say_the_photos_weight_per_attribute_of_a_fused_model():
    data = _old()
    data.update(format=7, inputs="image+text", text={}, image_weight={"colour": 0.25, "pattern": 0.0})
    card = parse_card(json.dumps(data))
    assert json.loads(card.to_json())["image_weight"] == {"colour": 0.25, "pattern": 0.0}
    vector, slices = card.image_weight_vector(), card.taxonomy.slices
    assert set(vector[slices["colour"]]) == {0.25} and set(vector[slices["pattern"]]) == {0.0}
    assert set(vector[slices["article_type"]]) == set(vector[slices["features"]]) == {1.0}
    assert len(vector) == card.taxonomy.num_outputs
    with pytest.raises(CardError, match="image_weight needs card format 7 or later, the card says 6"):
        parse_card(json.dumps({**data, "format": 6}))
    with pytest.raises(CardError, match="not single attributes"):
        parse_card(json.dumps({**data, "image_weight": {"features": 0.5}}))
    with pytest.raises(CardError, match="has no such choice"):
        parse_card(json.dumps({**data, "inputs": "text"}))
    with pytest.raises(CardError, match=r"must lie in \[0, 1\]"):
        parse_card(json.dumps({**data, "image_weight": {"colour": 1.5}}))
