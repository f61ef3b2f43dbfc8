import numpy as np
import pytest

from tagger.quality.thresholds import compute_decisions, tune_thresholds

# Six known rows plus a masked seventh (score .25, garbage target 1).
# F1 of "score >= t" on the known rows (3 positives):
#   t=.9: TP1 FP0 -> 2/4=.5     t=.8: TP1 FP1 -> 2/5=.4
#   t=.7: TP2 FP1 -> 4/6=.667   t=.6: TP2 FP2 -> 4/7=.571
#   t=.3: TP3 FP2 -> 6/8=.75    t=.2: TP3 FP3 -> 6/9=.667
# Best is .3, placed halfway to the next lower known score .2: .25.
# Were the masked row (.25, positive) counted, the best cut would be .25 -> .225.
SCORES = np.array([[0.9], [0.8], [0.7], [0.6], [0.3], [0.2], [0.25]])
TARGETS = np.array([[1], [0], [1], [0], [1], [0], [1]], dtype=np.float32)
MASK = np.array([[1], [1], [1], [1], [1], [1], [0]], dtype=bool)


def test_tuned_threshold_matches_hand_f1_search():
    thr = tune_thresholds(SCORES, TARGETS, MASK)
    assert thr.dtype == np.float32
    assert thr[0] == pytest.approx(0.25, abs=1e-6)


def test_tuned_threshold_reproduces_decision_on_float64_scores():
    # float64 scores, float32 thresholds: the tuning split's decisions are reproduced.
    thr = tune_thresholds(SCORES, TARGETS, MASK)
    decided = compute_decisions(SCORES[:6], thr, [])[:, 0]
    np.testing.assert_array_equal(decided, [True, True, True, True, True, False])


def test_tie_takes_highest_threshold():
    # t=.9: TP1 FN1 -> F1 2/3;  t=.6: TP2 FP2 -> F1 4/6 = 2/3 (t=.8 .5, t=.7 .4).
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    targets = np.array([[1], [0], [0], [1]])
    thr = tune_thresholds(scores, targets, np.ones_like(targets, dtype=bool))
    assert thr[0] == pytest.approx(0.85, abs=1e-6)  # cut at .9, halfway to .8


def test_fallback_when_no_known_positive():
    # col 0: the only positive is masked; col 1: nothing known; col 2: all negative.
    scores = np.array([[0.9, 0.9, 0.9], [0.1, 0.1, 0.1]])
    targets = np.array([[1, 1, 0], [0, 0, 0]])
    mask = np.array([[0, 0, 1], [1, 0, 1]], dtype=bool)
    thr = tune_thresholds(scores, targets, mask, fallback=0.42)
    np.testing.assert_allclose(thr, [0.42, 0.42, 0.42], rtol=1e-6)


# Outputs 0-2 are one single attribute; 3 and 4 are multi.
THRESHOLDS = np.array([0.5, 0.3, 0.6, 0.5, 0.1], dtype=np.float32)
DEC_SCORES = np.array(
    [
        [0.7, 0.8, 0.9, 0.4, 0.2],  # all pass -> best is col 2
        [0.52, 0.55, 0.59, 0.5, 0.05],  # col 2 highest but fails -> col 1
        [0.4, 0.2, 0.5, 0.9, 0.2],  # none passes -> abstain
    ]
)


def test_single_slice_picks_best_passing_and_abstains():
    d = compute_decisions(DEC_SCORES, THRESHOLDS, [slice(0, 3)])
    assert d.dtype == bool
    np.testing.assert_array_equal(
        d[:, :3], [[False, False, True], [False, True, False], [False, False, False]]
    )


def test_multi_outputs_threshold_independently():
    d = compute_decisions(DEC_SCORES, THRESHOLDS, [slice(0, 3)])
    # col 3: .4<.5, .5>=.5, .9>=.5; col 4: .2, .05, .2 against .1.
    np.testing.assert_array_equal(d[:, 3:], [[False, True], [True, False], [True, True]])


def test_without_slices_every_output_is_independent():
    d = compute_decisions(DEC_SCORES, THRESHOLDS, [])
    np.testing.assert_array_equal(d[0], [True, True, True, False, True])


def test_single_slice_equal_scores_take_first_value():
    d = compute_decisions(np.array([[0.2, 0.7, 0.7]]), np.array([0.1, 0.5, 0.5]), [slice(0, 3)])
    np.testing.assert_array_equal(d, [[False, True, False]])


def test_precision_threshold_is_the_lowest_cut_meeting_the_target():
    from tagger.quality.thresholds import precision_thresholds

    # Scores from high to low: 6 positives, then a negative, 2 positives, 3 negatives.
    s = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4], dtype=np.float32)
    y = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0, 0])
    m = np.ones_like(y, dtype=bool)
    # Accepting down to 0.55: 8 of 9 right (0.889); down to 0.5: 8 of 10 (0.8).
    t = precision_thresholds(s[:, None], y[:, None], m[:, None], 0.85)[0]
    assert 0.5 < t <= 0.55
    t = precision_thresholds(s[:, None], y[:, None], m[:, None], 0.8)[0]
    assert 0.45 < t <= 0.5
    # A target no cut reaches with 5 true positives: never auto-publish.
    # (alternating labels: only cuts with 1-2 true positives are that precise).
    alternating = (np.arange(12) % 2 == 0).astype(int)
    assert np.isinf(precision_thresholds(s[:, None], alternating[:, None], m[:, None], 0.9)[0])
    assert np.isfinite(precision_thresholds(s[:, None], alternating[:, None], m[:, None], 0.5)[0])
    # Too few known positives to measure a precision.
    few = np.zeros_like(y)
    few[:3] = 1
    assert np.isinf(precision_thresholds(s[:, None], few[:, None], m[:, None], 0.5)[0])


def test_review_flags_mark_decisions_below_auto_publish():
    from tagger.quality.thresholds import review_flags

    scores = np.array([[0.9, 0.6], [0.5, 0.99]])
    decisions = np.array([[True, True], [False, True]])
    flags = review_flags(scores, decisions, np.array([0.8, np.inf], dtype=np.float32))
    assert flags.tolist() == [[False, True], [False, True]]
    assert not review_flags(scores, decisions, None).any()


def test_softmax_head_decides_the_argmax_value_only_if_it_passes_its_threshold():
    # Outputs 0-2: a softmax attribute; output 3: a multi value (score >= threshold).
    scores = np.array([[0.5, 0.3, 0.2, 0.9],    # argmax 0 fails 0.6: abstain (value 1 passes)
                       [0.2, 0.7, 0.1, 0.1],    # argmax 1 passes 0.25: value 1
                       [0.4, 0.4, 0.2, 0.5],    # tie: the first value, 0, which fails: abstain
                       [0.65, 0.2, 0.15, 0.0]])  # argmax 0 passes: value 0
    thresholds = np.array([0.6, 0.25, 0.1, 0.5], dtype=np.float32)
    single = [slice(0, 3)]
    got = compute_decisions(scores, thresholds, single, argmax_slices=single)
    assert got.tolist() == [[False, False, False, True],
                            [False, True, False, False],
                            [False, False, False, True],
                            [True, False, False, False]]
    # The sigmoid rule on the same scores: the best passing value.
    today = compute_decisions(scores, thresholds, single)
    assert today[:, :3].tolist() == [[False, True, False], [False, True, False],
                                     [False, True, False], [True, False, False]]


def _softmax_case(wrong_b: int):
    """An attribute A/B/C (one softmax head) plus a multi output after it: 100 products of A,
    10 of B. A's products score 0.8 on A, 40 of them 0.65, which A's threshold 0.7 turns
    away; B scores 0.9 on its own 10 and wins `wrong_b` of A's at 0.4, under B's 0.5."""
    n = 110
    scores = np.zeros((n, 4), np.float32)
    targets = np.zeros((n, 4), np.float32)
    targets[:100, 0], targets[100:, 1] = 1, 1
    scores[:, 3] = 0.5
    scores[:100, 0], scores[:100, 2] = 0.8, 0.1
    scores[40:80, 0] = 0.65
    scores[:wrong_b, 0], scores[:wrong_b, 1] = 0.3, 0.4
    scores[100:, 1] = 0.9
    thresholds = np.array([0.7, 0.5, 0.5, 0.5], np.float32)
    return scores, thresholds, targets, np.ones_like(targets, dtype=bool)


def test_a_softmax_attribute_decides_its_argmax_unless_abstaining_pays_on_validation():
    from tagger.quality.thresholds import choose_abstention

    heads = {"abc": slice(0, 3)}
    # A's threshold abstains on 40 products the argmax gets right: always deciding wins.
    scores, thresholds, targets, mask = _softmax_case(wrong_b=0)
    out, abstains = choose_abstention(scores, thresholds, targets, mask, heads, lambda *_: thresholds)
    assert abstains == {"abc": False}
    assert out.tolist() == [0.0, 0.0, 0.0, 0.5]  # the multi output keeps its threshold
    decided = compute_decisions(scores, out, [slice(0, 3)], argmax_slices=[slice(0, 3)])
    assert decided[:, :3].sum(1).tolist() == [1] * 110
    # 30 of A's products called B at 0.4, which B's threshold 0.5 turns away: abstaining
    # costs no top-1 there (wrong either way) and lifts B's F1 from 0.4 to 1.0.
    scores, thresholds, targets, mask = _softmax_case(wrong_b=30)
    scores[40:80, 0] = 0.8  # no right answer abstains
    out, abstains = choose_abstention(scores, thresholds, targets, mask, heads, lambda *_: thresholds)
    assert abstains == {"abc": True} and out.tolist() == thresholds.tolist()


def test_abstaining_is_judged_with_thresholds_fitted_on_the_other_half_of_the_rows():
    from tagger.quality.thresholds import choose_abstention

    scores, thresholds, targets, mask = _softmax_case(wrong_b=30)
    scores[40:80, 0] = 0.8
    seen = []

    def tune(s, t, m):  # what each half is decided with: B's threshold from the other half
        seen.append(len(s))
        return np.array([0.7, 0.5 if len(seen) == 1 else 0.35, 0.5, 0.5], np.float32)

    # The first half keeps B's 0.5 and abstains on its share of the 30 products called B at
    # 0.4; the second half's thresholds let them all through: the gain halves, and still wins.
    out, abstains = choose_abstention(scores, thresholds, targets, mask, {"abc": slice(0, 3)}, tune)
    assert seen == [55, 55] and abstains == {"abc": True}
    # Fitted on the other half, no threshold turns the wrong ones away: always deciding.
    out, abstains = choose_abstention(scores, thresholds, targets, mask, {"abc": slice(0, 3)},
                                      lambda *_: np.array([0.7, 0.35, 0.5, 0.5], np.float32))
    assert abstains == {"abc": False} and out[:3].tolist() == [0.0, 0.0, 0.0]
