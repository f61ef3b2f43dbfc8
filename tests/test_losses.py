import math

import numpy as np
import pytest
import torch

from tagger.losses import compute_pos_weight, masked_bce_with_logits

# 4 rows x 2 outputs. Output 0: all known, 1 positive / 3 negatives -> 3.0.
# Output 1: row 3 is masked, so 2 positives / 1 negative -> 0.5 (1/3 if the
# masked row were counted).
TARGETS = np.array([[1, 1], [0, 1], [0, 0], [0, 1]], dtype=np.float32)
MASK = np.array([[1, 1], [1, 1], [1, 1], [1, 0]], dtype=bool)


def test_pos_weight_linear_counts_known_entries_only():
    w = compute_pos_weight(TARGETS, MASK)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [3.0, 0.5])


def test_pos_weight_sqrt():
    w = compute_pos_weight(TARGETS, MASK, mode="sqrt")
    np.testing.assert_allclose(w, [math.sqrt(3.0), math.sqrt(0.5)], rtol=1e-6)


def test_pos_weight_none_is_ones():
    np.testing.assert_array_equal(compute_pos_weight(TARGETS, MASK, mode="none"), [1.0, 1.0])


def test_pos_weight_clipped_both_ways():
    # 3.0 -> 1.5 (upper); 0.5 -> 1/1.5 (lower).
    w = compute_pos_weight(TARGETS, MASK, max_weight=1.5)
    np.testing.assert_allclose(w, [1.5, 1 / 1.5], rtol=1e-6)


def test_pos_weight_uninformative_outputs_get_one():
    targets = np.array([[1, 0, 1], [1, 0, 0], [1, 0, 0]], dtype=np.float32)
    # col 0: only positives; col 1: only negatives; col 2: its positive is masked.
    mask = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(compute_pos_weight(targets, mask, max_weight=2.0), [1, 1, 1])


def test_pos_weight_rejects_unknown_mode():
    with pytest.raises(ValueError):
        compute_pos_weight(TARGETS, MASK, mode="log")


LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
BCE_TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
BCE_MASK = torch.tensor([[True, True], [True, False]])
# BCE(x, y) = log(1 + e^x) - y*x over the 3 known entries:
# (0,0): log 2; (0,1): log(1 + e^2); (1,0): log(1 + e^-1).
HAND_LOSS = (math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e**-1)) / 3


def test_masked_bce_equals_hand_value():
    loss = masked_bce_with_logits(LOGITS, BCE_TARGETS, BCE_MASK)
    assert loss.item() == pytest.approx(HAND_LOSS, rel=1e-6)


def test_masked_bce_ignores_garbage_in_masked_entries():
    targets = BCE_TARGETS.clone()
    targets[1, 1] = float("nan")
    logits = LOGITS.clone().requires_grad_(True)
    with torch.no_grad():
        logits[1, 1] = -50.0  # would dominate the loss if counted
    loss = masked_bce_with_logits(logits, targets, BCE_MASK)
    assert loss.item() == pytest.approx(HAND_LOSS, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[1, 1] == 0


def test_masked_bce_pos_weight_scales_positive_term():
    # Only (0,0) is positive among known entries: its term becomes 3*log 2.
    loss = masked_bce_with_logits(LOGITS, BCE_TARGETS, BCE_MASK, torch.tensor([3.0, 1.0]))
    expected = (3 * math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e**-1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_masked_bce_all_masked_is_zero():
    loss = masked_bce_with_logits(LOGITS, BCE_TARGETS, torch.zeros(2, 2, dtype=torch.bool))
    assert loss.item() == 0.0


def test_masked_bce_under_autocast_is_float32():
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = masked_bce_with_logits(LOGITS.bfloat16(), BCE_TARGETS, BCE_MASK)
    assert loss.dtype == torch.float32
    # bf16 logits here are exact (0, 2, -1), so the value matches closely.
    assert loss.item() == pytest.approx(HAND_LOSS, rel=1e-5)
