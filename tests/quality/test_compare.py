import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from catalog_schemas.tables import EVALUATION_PREDICTIONS
from tagger.quality.compare import paired_bootstrap, single_choices
from tagger.quality.evaluation import prediction_table
from tests.conftest import SMALL_TAXONOMY

# colour (single): red, blue, green; features (multi): logo, zip
TARGETS = np.array([[1, 0, 0, 1, 0],
                    [0, 1, 0, 0, 1],
                    [0, 0, 1, 1, 1],
                    [0, 0, 0, 0, 0]], np.float32)
MASK = np.array([[1, 1, 1, 1, 1],
                 [1, 1, 1, 1, 1],
                 [1, 1, 1, 0, 0],   # features unknown
                 [0, 0, 0, 1, 1]], bool)  # colour unknown
SCORES = np.array([[0.8, 0.1, 0.1, 0.9, 0.2],
                   [0.2, 0.3, 0.5, 0.4, 0.7],
                   [0.4, 0.3, 0.3, 0.5, 0.5],
                   [0.9, 0.0, 0.1, 0.1, 0.1]], np.float32)
DECISIONS = np.array([[1, 0, 0, 1, 0],
                      [0, 0, 1, 0, 1],   # colour wrong
                      [0, 0, 0, 0, 0],   # colour abstains
                      [1, 0, 0, 0, 0]], bool)


def test_the_predictions_table_holds_the_known_entries_and_gives_back_each_products_choice():
    ids = ["p1", "p2", "p3", "p4"]
    table = prediction_table(SMALL_TAXONOMY, ids, TARGETS, MASK, SCORES, DECISIONS)
    assert table.schema == EVALUATION_PREDICTIONS
    assert table.num_rows == MASK.sum()  # unknown entries are not rows
    row = table.slice(2, 1).to_pylist()[0]
    assert row == dict(product_id="p1", attribute="colour", value="green", label=False, decided=False,
                       score=pytest.approx(0.1))
    # read back in another product order: labels, choices, abstention = 3 (the number of values),
    # an unknown colour = -1 (p4's masked colour decision is not a row, so not a choice either)
    label, choice = single_choices(table, SMALL_TAXONOMY, ["p4", "p3", "p2", "p1"])["colour"]
    assert label.tolist() == [-1, 2, 1, 0]
    assert choice.tolist() == [3, 3, 2, 0]
    assert set(single_choices(table, SMALL_TAXONOMY, ids)) == {"colour"}  # single attributes only
    label, choice = single_choices(table, SMALL_TAXONOMY, [])["colour"]  # no product: empty, no error
    assert label.size == choice.size == 0
    renamed = SMALL_TAXONOMY.model_copy(update={"attributes": (
        SMALL_TAXONOMY.attributes[0].model_copy(update={"values": ("red", "blue", "teal")}),
        *SMALL_TAXONOMY.attributes[1:])})
    with pytest.raises(ValueError, match=r"colour values its taxonomy lacks: \['green'\]"):
        single_choices(table, renamed, ids)


def _models(rng, n=600):
    y = {"colour": rng.integers(0, 3, n), "size": rng.integers(0, 4, n)}
    y["size"][: n // 3] = -1  # a third unknown, as season is on the real catalog
    good = {a: np.where(rng.random(n) < 0.9, v, (v + 1) % 3) for a, v in y.items()}
    poor = {a: np.where(rng.random(n) < 0.7, v, (v + 1) % 3) for a, v in y.items()}
    return y, good, poor


def test_the_point_figures_are_sklearns_and_a_clear_lead_is_told_from_none():
    y, good, poor = _models(np.random.default_rng(0))
    classes = {"colour": 3, "size": 4}
    out = paired_bootstrap(y, {"good": good, "same": dict(good), "poor": poor}, classes, "good", resamples=300)
    models = out["models"]
    for name, pred in (("good", good), ("poor", poor)):
        acc = np.mean([accuracy_score(y[a][y[a] >= 0], pred[a][y[a] >= 0]) for a in y])
        f1 = np.mean([f1_score(y[a][y[a] >= 0], pred[a][y[a] >= 0], average="macro",
                               labels=np.unique(y[a][y[a] >= 0])) for a in y])
        assert models[name]["mean_accuracy"] == pytest.approx(acc, abs=1e-4)
        assert models[name]["mean_macro_f1"] == pytest.approx(f1, abs=1e-4)
        lo, hi = models[name]["mean_accuracy_interval"]
        assert lo < models[name]["mean_accuracy"] < hi
    lead = models["poor"]["good lead, accuracy"]
    assert lead["difference"] == pytest.approx(models["good"]["mean_accuracy"] - models["poor"]["mean_accuracy"], abs=2e-4)
    assert 0 < lead["interval"][0] < lead["difference"] < lead["interval"][1] and lead["ahead_share"] == 1.0
    same = models["same"]["good lead, macro_f1"]
    assert same["difference"] == 0 and same["interval"] == [0, 0] and same["ahead_share"] == 0
    assert "good lead, accuracy" not in models["good"]


def test_a_lead_of_two_products_in_two_hundred_is_not_clear():
    rng = np.random.default_rng(1)
    y = {"colour": rng.integers(0, 3, 200)}
    a = {"colour": np.where(rng.random(200) < 0.9, y["colour"], (y["colour"] + 1) % 3)}
    a["colour"][:2] = y["colour"][:2]
    b = {"colour": a["colour"].copy()}
    b["colour"][:2] = (y["colour"][:2] + 1) % 3  # b is wrong on 2 products a gets right
    lead = paired_bootstrap(y, {"a": a, "b": b}, {"colour": 3}, "a", resamples=500)["models"]["b"]["a lead, accuracy"]
    assert lead["difference"] == pytest.approx(0.01)
    # about one resample in e^2 holds neither product: b is never ahead, a not clearly
    assert lead["interval"][0] == 0 and 0.75 < lead["ahead_share"] < 0.95


def test_an_abstention_is_wrong_and_an_unknown_reference_is_refused():
    y = {"colour": np.array([0, 1, 2, 0])}
    abstains = {"colour": np.array([0, 3, 3, 0])}  # 3: no value decided
    out = paired_bootstrap(y, {"m": abstains}, {"colour": 3}, "m", resamples=10)["models"]["m"]
    assert out["mean_accuracy"] == 0.5
    with pytest.raises(ValueError, match="reference 'x'"):
        paired_bootstrap(y, {"m": abstains}, {"colour": 3}, "x")


def test_resamples_drawn_a_chunk_at_a_time_are_the_same_resamples(monkeypatch):
    import tagger.quality.compare as compare

    y, good, poor = _models(np.random.default_rng(2), n=300)
    classes = {"colour": 3, "size": 4}
    whole = paired_bootstrap(y, {"good": good, "poor": poor}, classes, "good", resamples=250)
    monkeypatch.setattr(compare, "CHUNK", 300 * 40)  # 40 resamples at a time
    assert paired_bootstrap(y, {"good": good, "poor": poor}, classes, "good", resamples=250) == whole


def test_an_attribute_missing_from_a_resample_is_left_out_of_its_mean():
    y = {"colour": np.array([0, 1, 2, 0, 1, 2, 0, 1]), "size": np.array([0, -1, -1, -1, -1, -1, -1, -1])}
    model = {"colour": y["colour"].copy(), "size": np.array([1, 0, 0, 0, 0, 0, 0, 0])}  # size always wrong
    out = paired_bootstrap(y, {"m": model}, {"colour": 3, "size": 2}, "m", resamples=200)["models"]["m"]
    assert out["mean_accuracy"] == 0.5  # colour 1, size 0
    # a resample without product 0 has no size: its mean is colour's alone, 1
    assert out["mean_accuracy_interval"] == [0.5, 1.0]


def test_choices_from_the_arrays_are_those_read_back_from_the_table():
    from tagger.quality.compare import choices_from_arrays

    ids = ["p1", "p2", "p3", "p4"]
    table = prediction_table(SMALL_TAXONOMY, ids, TARGETS, MASK, SCORES, DECISIONS)
    from_table = single_choices(table, SMALL_TAXONOMY, ids)
    from_arrays = choices_from_arrays(SMALL_TAXONOMY, TARGETS, MASK, DECISIONS)
    assert from_arrays.keys() == from_table.keys() == {"colour"}
    assert [x.tolist() for x in from_arrays["colour"]] == [x.tolist() for x in from_table["colour"]]
    assert from_arrays["colour"][1].tolist() == [0, 2, 3, 3]  # p4's masked decision is no choice


def test_nothing_to_compare_on_is_a_clear_error():
    with pytest.raises(ValueError, match="no product has a known value"):
        paired_bootstrap({"colour": np.array([-1, -1])}, {"m": {"colour": np.array([0, 1])}}, {"colour": 3}, "m")
