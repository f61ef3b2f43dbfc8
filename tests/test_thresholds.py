import numpy as np
import pytest

from tagger.thresholds import compute_decisions, tune_thresholds

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
