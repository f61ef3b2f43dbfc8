from pathlib import Path

import numpy as np
import pytest

from catalog_schemas.taxonomy import TaxonomyError, load_taxonomy, shipped_taxonomy
from tagger.labels import (
    LabelError,
    applicable_mask,
    decode_decisions,
    encode_labels,
    parse_labels,
    single_slices,
)

SHIPPED = sorted(p.stem for p in (Path(shipped_taxonomy("demo")).parent).glob("*.yaml"))

TAX = load_taxonomy("""
name: t
attributes:
  - {name: colour, kind: single, values: [red, blue]}
  - {name: features, kind: multi, values: [logo, pocket, zip]}
  - {name: sleeve, kind: single, values: [short, long], categories: [tops]}
""")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_taxonomies_load(name):
    tax = load_taxonomy(shipped_taxonomy(name))
    assert tax.num_outputs == sum(len(a.values) for a in tax.attributes) > 0
    assert len(set(tax.outputs)) == tax.num_outputs


def test_outputs_and_slices_follow_file_order():
    assert TAX.outputs[:3] == [("colour", "red"), ("colour", "blue"), ("features", "logo")]
    assert TAX.slices == {"colour": slice(0, 2), "features": slice(2, 5), "sleeve": slice(5, 7)}
    assert single_slices(TAX) == {"colour": slice(0, 2), "sleeve": slice(5, 7)}


@pytest.mark.parametrize("text, message", [
    ("name: x\nattributes: [{name: a, kind: one, values: [p]}]", "attributes.0.kind"),
    ("name: x\nattributes: [{name: a, kind: single, values: [p, p]}]", "listed twice"),
    ("name: x\nattributes: [{name: a, kind: single, values: [p]}, {name: a, kind: multi, values: [q]}]",
     "repeated: a"),
    ("name: x\nattributes: [{name: a, kind: single, values: [p], colour: red}]", "colour"),
    ("name: x\nattributes: []", "attributes"),
    ("- just a list", "expected a mapping"),
])
def test_bad_taxonomies_name_the_problem(text, message):
    with pytest.raises(TaxonomyError, match=message):
        load_taxonomy(text + "\n")


def test_missing_taxonomy_file_and_unknown_shipped_name():
    with pytest.raises(TaxonomyError, match="does not exist"):
        load_taxonomy("nope/missing.yaml")
    with pytest.raises(TaxonomyError, match="Shipped: .*demo"):
        shipped_taxonomy("nope")


def test_parse_labels_cells():
    row = {"colour": "red", "features": "zip|logo", "sleeve": "long"}
    assert parse_labels(row, TAX, "tops") == {"colour": ["red"], "features": ["logo", "zip"], "sleeve": ["long"]}
    # not applicable to bags: dropped; '-' is known-none; empty/None/NaN unknown
    assert parse_labels(row | {"features": "-"}, TAX, "bags") == {"colour": ["red"], "features": []}
    assert parse_labels({"colour": "", "features": None, "sleeve": float("nan")}, TAX, "tops") == {}
    assert parse_labels({"features": ["pocket"]}, TAX) == {"features": ["pocket"]}


@pytest.mark.parametrize("row, reason, message", [
    ({"colour": "purple"}, "unknown_label", "colour: 'purple' is not a value.*Known: red, blue"),
    ({"colour": ["red", "blue"]}, "bad_label", "single-choice but the row has 2"),
    ({"features": "logo|hat"}, "unknown_label", "'hat'"),
])
def test_parse_labels_rejects(row, reason, message):
    with pytest.raises(LabelError, match=message) as e:
        parse_labels(row, TAX, "tops")
    assert e.value.reason == reason


def test_encode_labels_targets_and_mask():
    labels = [{"colour": ["blue"], "sleeve": ["short"]}, {"features": []}, {"sleeve": ["long"]}]
    targets, mask = encode_labels(TAX, labels, ["tops", "tops", "bags"])
    np.testing.assert_array_equal(targets, [[0, 1, 0, 0, 0, 1, 0], [0] * 7, [0] * 7])
    np.testing.assert_array_equal(mask, [
        [1, 1, 0, 0, 0, 1, 1],  # features unknown
        [0, 0, 1, 1, 1, 0, 0],  # known none of the features
        [0, 0, 0, 0, 0, 0, 0],  # sleeve does not apply to bags: masked despite a label
    ])


def test_applicable_mask_and_decode():
    np.testing.assert_array_equal(applicable_mask(TAX, ["tops", None])[:, 5:], [[1, 1], [0, 0]])
    decisions = np.zeros((2, 7), dtype=bool)
    decisions[0, [1, 3]] = True
    assert decode_decisions(TAX, decisions) == [[("colour", "blue", 1), ("features", "pocket", 3)], []]


def _catalog(text) -> str:
    return f"name: x\nattributes: [{{name: a, kind: single, values: [p]}}]\ncatalog:\n  text: {text}\n"


@pytest.mark.parametrize("text, parts", [
    ("productDisplayName", ("productDisplayName",)),
    ("[productDisplayName, description]", ("productDisplayName", "description")),
    ('"{brand} {productDisplayName}"', ("{brand} {productDisplayName}",)),
    ('["{brand} {title}", description]', ("{brand} {title}", "description")),
    ("[]", ()),
])
def test_catalog_text_is_a_column_a_template_or_a_list(text, parts):
    tax = load_taxonomy(_catalog(text))
    assert tax.catalog.text == parts
    assert load_taxonomy(tax.to_dict()) == tax  # round trip


def test_a_taxonomy_without_text_serialises_as_before():
    tax = load_taxonomy("name: x\nattributes: [{name: a, kind: single, values: [p]}]\n")
    assert tax.catalog.text == ()
    assert "text" not in tax.to_dict()["catalog"] and '"text"' not in tax.model_dump_json()
    titled = load_taxonomy(_catalog("title"))
    assert titled.to_dict()["catalog"]["text"] == ["title"]


@pytest.mark.parametrize("text, message", [
    ('""', "text entries must be column names or templates"),
    ('[title, " "]', "text entries must be column names or templates"),
    ('"{brand"', r"text template '\{brand' is not valid"),
    ("{column: title}", "catalog.text"),
])
def test_bad_catalog_text_names_the_problem(text, message):
    with pytest.raises(TaxonomyError, match=message):
        load_taxonomy(_catalog(text))
