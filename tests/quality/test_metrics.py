import json

import numpy as np
import pytest

from tagger.quality.metrics import compute_metrics

# color is single (cols 0-2), style is multi (cols 3-4).
OUTPUTS = [("color", "red"), ("color", "blue"), ("color", "green"),
           ("style", "casual"), ("style", "formal")]
SINGLE = {"color": slice(0, 3)}
T = np.array([
    [1, 0, 0, 1, 0],
    [0, 1, 0, 1, 1],
    [0, 0, 1, 0, 0],
    [0, 1, 0, 0, 1],
], dtype=np.float32)
M = np.array([
    [1, 1, 1, 1, 1],
    [1, 1, 1, 1, 0],  # formal unknown
    [1, 1, 1, 1, 1],
    [0, 1, 1, 0, 0],  # red and all of style unknown
], dtype=bool)
S = np.array([
    [0.9, 0.1, 0.1, 0.8, 0.6],
    [0.2, 0.15, 0.6, 0.05, 0.9],
    [0.3, 0.2, 0.5, 0.1, 0.7],
    [0.99, 0.8, 0.3, 0.9, 0.9],  # masked red .99 (target 0) would halve red's AP
], dtype=np.float32)
D = np.array([
    [1, 0, 0, 1, 1],  # color red (right)
    [0, 0, 1, 1, 1],  # color green (wrong); masked formal decision ignored
    [0, 0, 0, 1, 0],  # color abstains
    [0, 1, 0, 1, 0],  # slice not fully known -> no accuracy; style masked
], dtype=bool)
# Per output over known rows:
#   red    y[1,0,0]   d[1,0,0]   TP1           P1  R1   F1 1    AP 1
#   blue   y[0,1,0,1] d[0,0,0,1] TP1 FN1       P1  R.5  F1 2/3  AP (1+2/3)/2=5/6
#   green  y[0,0,1,0] d[0,1,0,0] FP1 FN1       P0  R0   F1 0    AP 1/2
#   casual y[1,1,0]   d[1,1,1]   TP2 FP1       P2/3 R1  F1 .8   AP (1+2/3)/2=5/6
#   formal y[0,0]     d[1,0]     FP1           P0  R0   F1 0    AP None, no positive
# Pooled over 16 known entries: TP4 FP3 FN2.


@pytest.fixture(scope="module")
def result():
    return compute_metrics(T, M, S, D, OUTPUTS, SINGLE)


def test_global_metrics(result):
    assert result["support"] == 16
    assert result["micro_f1"] == pytest.approx(8 / 13)  # 2TP/(2TP+FP+FN)
    assert result["macro_f1"] == pytest.approx((1 + 2 / 3 + 0 + 0.8) / 4)  # formal excluded
    assert result["mAP"] == pytest.approx((1 + 5 / 6 + 1 / 2 + 5 / 6) / 4)
    assert result["hamming_loss"] == pytest.approx(5 / 16)  # FP+FN errors


def test_per_value(result):
    blue = result["per_value"]["color"]["blue"]
    assert blue == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "ap": 5 / 6, "support": 2, "known": 4}
    )
    red = result["per_value"]["color"]["red"]
    assert (red["ap"], red["support"], red["known"]) == (1.0, 1, 3)
    casual = result["per_value"]["style"]["casual"]
    assert casual["precision"] == pytest.approx(2 / 3)
    assert casual["f1"] == pytest.approx(0.8)
    assert result["per_value"]["style"]["formal"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "ap": None, "support": 0, "known": 2
    }


def test_per_attribute(result):
    color = result["per_attribute"]["color"]
    assert color["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert color["known"] == 4
    # Rows 0-2 are eligible (row 3 has red unknown): right, wrong, abstained.
    assert color["accuracy"] == pytest.approx(1 / 3)
    assert color["coverage"] == pytest.approx(2 / 3)
    style = result["per_attribute"]["style"]
    assert style == pytest.approx({"macro_f1": 0.8, "known": 3})


def test_result_is_strict_json(result):
    json.dumps(result, allow_nan=False)
    for v in (result["micro_f1"], result["support"], result["per_value"]["color"]["red"]["f1"]):
        assert type(v) in (float, int)


def test_accuracy_skips_rows_without_exactly_one_true_value():
    # Row 1 has two true values, row 2 none: both excluded. Of rows 0, 3, 4:
    # right, wrong value, abstained on true value 0 (still wrong) -> 1/3.
    t = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0]])
    d = np.array([[1, 0], [0, 0], [0, 0], [1, 0], [0, 0]], dtype=bool)
    r = compute_metrics(t, np.ones_like(d), np.full(t.shape, 0.5), d,
                        [("size", "s"), ("size", "m")], {"size": slice(0, 2)})
    assert r["per_attribute"]["size"]["accuracy"] == pytest.approx(1 / 3)
    assert r["per_attribute"]["size"]["coverage"] == pytest.approx(2 / 3)


def test_nothing_known_gives_none():
    r = compute_metrics(T, np.zeros_like(M), S, D, OUTPUTS, SINGLE)
    assert r["support"] == 0
    assert r["micro_f1"] is r["macro_f1"] is r["mAP"] is r["hamming_loss"] is None
    assert r["per_attribute"]["color"]["accuracy"] is None
    json.dumps(r, allow_nan=False)


def test_single_slice_must_match_outputs():
    with pytest.raises(ValueError):
        compute_metrics(T, M, S, D, OUTPUTS, {"color": slice(0, 4)})


def test_top1_accuracy_always_answers_while_accuracy_counts_abstentions():
    from tagger.quality.metrics import compute_single_accuracy

    positive = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=bool)
    known = np.ones_like(positive)
    scores = np.array([[0.4, 0.3, 0.1], [0.2, 0.3, 0.1], [0.6, 0.1, 0.2], [0.9, 0.0, 0.0]])
    decisions = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=bool)  # row 0 abstains
    m = compute_single_accuracy(positive, known, decisions, scores)
    assert m == {"accuracy": 0.5, "coverage": 0.75, "top1_accuracy": 0.75}


def test_review_metrics_split_decisions_and_their_precision():
    from tagger.quality.metrics import compute_review_metrics

    positive = np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)
    known = np.array([[1, 1], [1, 1], [1, 0]], dtype=bool)
    decisions = np.array([[1, 1], [1, 1], [1, 1]], dtype=bool)  # (2,1) is unknown: not counted
    review = np.array([[0, 1], [1, 0], [0, 1]], dtype=bool)
    m = compute_review_metrics(positive, known, decisions, review)
    assert m == {"decisions": 5, "auto_share": 0.6, "auto_precision": 1.0,
                 "review_share": 0.4, "review_precision": 0.0}
