"""Temperature scaling and the expected calibration error."""

import numpy as np
import pytest

from tagger.quality.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperatures,
    temperature_vector,
)


def _labels(z: np.ndarray, true_t: float, seed: int = 0) -> np.ndarray:
    """Labels drawn so that sigmoid(z / true_t) is the true probability."""
    rng = np.random.default_rng(seed)
    return (rng.random(z.shape) < 1 / (1 + np.exp(-z / true_t))).astype(np.float32)


def test_fit_recovers_the_temperature_of_each_attribute():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 4, size=(20_000, 4)).astype(np.float32)
    y = np.concatenate([_labels(z[:, :2], 2.5), _labels(z[:, 2:], 0.5, seed=2)], axis=1)
    mask = np.ones_like(y, dtype=bool)
    temps = fit_temperatures(z, y, mask, {"over": slice(0, 2), "under": slice(2, 4)})
    assert temps["over"] == pytest.approx(2.5, rel=0.08)
    assert temps["under"] == pytest.approx(0.5, rel=0.08)


def test_unknown_entries_do_not_count():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 4, size=(10_000, 1)).astype(np.float32)
    y = _labels(z, 2.0)
    mask = rng.random(z.shape) < 0.5
    poisoned = np.where(mask, y, 1 - y)  # unknown entries carry wrong labels
    temps = fit_temperatures(z, poisoned, mask, {"a": slice(0, 1)})
    assert temps["a"] == pytest.approx(2.0, rel=0.1)
    assert expected_calibration_error(apply_temperature(z, 2.0), poisoned, mask) < 0.03


def test_attribute_without_both_classes_keeps_one():
    z = np.array([[1.0], [2.0]], dtype=np.float32)
    assert fit_temperatures(z, np.ones((2, 1)), np.ones((2, 1), bool), {"a": slice(0, 1)}) == {"a": 1.0}


def test_ece_by_hand_and_scaling_lowers_it():
    scores = np.array([[0.1], [0.9], [0.9], [0.9]])
    targets = np.array([[0], [1], [1], [0]])
    # bin of 0.1: 1 entry, 0 positive -> gap 0.1; bin of 0.9: 3 entries, 2/3 positive -> gap 0.2333
    expected = (1 * 0.1 + 3 * abs(2 / 3 - 0.9)) / 4
    assert expected_calibration_error(scores, targets, np.ones_like(targets, bool)) == pytest.approx(expected)
    assert expected_calibration_error(scores, targets, np.zeros_like(targets, bool)) is None

    rng = np.random.default_rng(4)
    z = rng.normal(0, 3, size=(20_000, 2)).astype(np.float32)
    y = _labels(z, 3.0)
    mask = np.ones_like(y, dtype=bool)
    before = expected_calibration_error(apply_temperature(z), y, mask)
    t = fit_temperatures(z, y, mask, {"a": slice(0, 2)})["a"]
    after = expected_calibration_error(apply_temperature(z, t), y, mask)
    assert before > 0.1 and after < 0.02


def test_temperature_vector_spreads_over_the_attribute_slice():
    v = temperature_vector({"a": 2.0, "gone": 3.0}, {"a": slice(1, 3), "b": slice(3, 4)}, 4)
    assert v.tolist() == [1.0, 2.0, 2.0, 1.0]
    assert temperature_vector(None, {"a": slice(0, 2)}, 2).tolist() == [1.0, 1.0]


def test_softmax_slices_score_as_one_softmax_with_their_temperature():
    ln3 = np.log(3.0)
    logits = np.array([[0.0, 2 * ln3, 0.0]], dtype=np.float32)
    t = np.array([2.0, 2.0, 1.0], dtype=np.float32)
    scores = apply_temperature(logits, t, softmax_slices=[slice(0, 2)])
    assert scores.dtype == np.float32
    # softmax([0, 2 ln 3] / 2) = [1/4, 3/4]; output 2 stays sigmoid(0) = 1/2
    np.testing.assert_allclose(scores, [[0.25, 0.75, 0.5]], rtol=1e-6)
    np.testing.assert_array_equal(apply_temperature(logits, t), apply_temperature(logits, t, ()))


def test_softmax_temperature_minimises_the_cross_entropy_of_known_rows():
    # Two values, logits [ln 3, -ln 3] on every row; 3 known rows are value 0, one is value 1:
    # the best probability of value 0 is 3/4, softmax([ln 3, -ln 3] / T) gives it at T = 2.
    # (Sigmoids of the same entries are right at T = 1: sigmoid(ln 3) = 3/4.)
    # A fifth row is unknown (masked) and would pull T down if counted.
    ln3 = np.log(3.0)
    z = np.array([[ln3, -ln3]] * 5)
    y = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]])
    mask = np.array([[True, True]] * 4 + [[False, False]])
    t = fit_temperatures(z, y, mask, {"a": slice(0, 2)}, softmax_slices=[slice(0, 2)])
    assert t["a"] == pytest.approx(2.0, abs=1e-3)
    assert fit_temperatures(z, y, mask, {"a": slice(0, 2)})["a"] == pytest.approx(1.0, abs=1e-3)
    # one value only among the known rows: nothing to fit
    same = np.array([[1, 0]] * 5)
    assert fit_temperatures(z, same, mask, {"a": slice(0, 2)}, softmax_slices=[slice(0, 2)]) == {"a": 1.0}
