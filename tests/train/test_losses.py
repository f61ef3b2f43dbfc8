import math

import numpy as np
import pytest
import torch

from tagger.train.losses import compute_pos_weight, masked_bce_with_logits

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


def _random_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 5, generator=g) * 3
    targets = (torch.rand(8, 5, generator=g) > 0.7).float()
    mask = torch.rand(8, 5, generator=g) > 0.2
    return logits, targets, mask


@pytest.mark.parametrize("kind,kwargs", [("focal", dict(gamma=0.0)), ("asl", dict(gamma_neg=0.0, clip=0.0))])
def test_focal_and_asl_reduce_to_bce(kind, kwargs):
    from tagger.train.losses import masked_multilabel_loss

    logits, targets, mask = _random_batch()
    pw = torch.tensor([1.0, 2.0, 3.0, 0.5, 1.0])
    expected = masked_bce_with_logits(logits, targets, mask, pw)
    got = masked_multilabel_loss(logits, targets, mask, pw, kind=kind, **kwargs)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_focal_and_asl_discount_easy_entries():
    from tagger.train.losses import masked_multilabel_loss

    easy_neg = torch.tensor([[-4.0]])
    hard_neg = torch.tensor([[2.0]])
    zero, known = torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool)
    for kind in ("focal", "asl"):
        ratio_easy = (masked_multilabel_loss(easy_neg, zero, known, kind=kind)
                      / masked_bce_with_logits(easy_neg, zero, known)).item()
        ratio_hard = (masked_multilabel_loss(hard_neg, zero, known, kind=kind)
                      / masked_bce_with_logits(hard_neg, zero, known)).item()
        assert ratio_easy < 0.01 and ratio_hard > ratio_easy * 10, kind
    # asl's clip: a negative scored below it costs nothing at all.
    assert masked_multilabel_loss(torch.tensor([[-4.0]]), zero, known, kind="asl").item() == 0.0


@pytest.mark.parametrize("kind", ["focal", "asl"])
def test_new_losses_ignore_unknown_entries_and_stay_finite(kind):
    from tagger.train.losses import masked_multilabel_loss

    logits, targets, mask = _random_batch(1)
    logits = (logits * 30).requires_grad_()  # saturated sigmoids
    garbage = torch.where(mask, targets, torch.full_like(targets, float("nan")))
    loss = masked_multilabel_loss(logits, garbage, mask, kind=kind)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad[~mask] == 0).all()
    with pytest.raises(ValueError, match="unknown loss"):
        masked_multilabel_loss(logits, targets, mask, kind="hinge")
