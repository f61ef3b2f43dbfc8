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


# --- head softmax: one cross-entropy per `single` attribute -------------------------------
# Outputs 0-2: a single attribute (one softmax); output 3: a multi attribute (BCE).
# Row 0: single known = value 0; multi known positive.
# Row 1: single known = value 1; multi unknown.
# Row 2: single unknown (garbage targets, huge logits); multi known negative.
# Row 3: single does not apply to the category (masked, a stray 1 in its targets); multi unknown.
MT_LOGITS = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                          [0.0, 2.0, 0.0, 1.0],
                          [50.0, -50.0, 9.0, -1.0],
                          [0.0, 0.0, 30.0, 4.0]])
MT_TARGETS = torch.tensor([[1.0, 0.0, 0.0, 1.0],
                           [0.0, 1.0, 0.0, float("nan")],
                           [float("nan"), 1.0, 1.0, 0.0],
                           [0.0, 0.0, 1.0, 0.0]])
MT_MASK = torch.tensor([[True, True, True, True],
                        [True, True, True, False],
                        [False, False, False, True],
                        [False, False, False, False]])
SINGLE = slice(0, 3)
# -log softmax of the true value: row 0 log(e + 2) - 1; row 1 log(e^2 + 2) - 2.
CE0, CE1 = math.log(math.e + 2) - 1, math.log(math.e**2 + 2) - 2
# BCE of the multi output's two known entries: log 2 (logit 0, positive), log(1 + e^-1).
BCE_MEAN = (math.log(2) + math.log(1 + math.e**-1)) / 2


def test_multitask_loss_is_mean_cross_entropy_plus_the_masked_bce():
    from tagger.train.losses import masked_multitask_loss

    logits = MT_LOGITS.clone().requires_grad_(True)
    loss = masked_multitask_loss(logits, MT_TARGETS, MT_MASK, [SINGLE])
    assert loss.item() == pytest.approx((CE0 + CE1) / 2 + BCE_MEAN, rel=1e-6)
    loss.backward()
    # unknown and not-applicable entries contribute nothing, not even a gradient
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[2:, :3] == 0).all() and (logits.grad[[1, 3], 3] == 0).all()


def test_multitask_loss_class_weights_give_the_weighted_mean_over_known_rows():
    from tagger.train.losses import masked_multitask_loss

    w = torch.tensor([2.0, 0.5, 7.0, 9.0])  # output 2 has no known row; 3 is not softmax
    loss = masked_multitask_loss(MT_LOGITS, MT_TARGETS, MT_MASK, [SINGLE], class_weight=w)
    assert loss.item() == pytest.approx((2 * CE0 + 0.5 * CE1) / 2.5 + BCE_MEAN, rel=1e-6)


def test_multitask_loss_label_smoothing():
    from tagger.train.losses import masked_multitask_loss

    eps = 0.3

    def smoothed(z, y):  # (1 - eps) * CE + eps * mean over the values of -log p
        log_p = [zi - math.log(sum(math.exp(v) for v in z)) for zi in z]
        return -(1 - eps) * log_p[y] - eps / 3 * sum(log_p)

    hand = (smoothed([1, 0, 0], 0) + smoothed([0, 2, 0], 1)) / 2 + BCE_MEAN
    loss = masked_multitask_loss(MT_LOGITS, MT_TARGETS, MT_MASK, [SINGLE], label_smoothing=eps)
    assert loss.item() == pytest.approx(hand, rel=1e-6)


def test_class_weights_weight_rows_not_the_smoothing_of_each_value():
    from tagger.train.losses import masked_multitask_loss

    eps = 0.3
    w = torch.tensor([2.0, 0.5, 50.0, 9.0])  # value 2 (no known row) is rare: weight 50

    def smoothed(z, y):
        log_p = [zi - math.log(sum(math.exp(v) for v in z)) for zi in z]
        return -(1 - eps) * log_p[y] - eps / 3 * sum(log_p)

    # Row 0 (label 0) weighs 2, row 1 (label 1) weighs 0.5; value 2's weight plays no part,
    # so a rare value cannot pull the smoothing of every row toward itself.
    hand = (2 * smoothed([1, 0, 0], 0) + 0.5 * smoothed([0, 2, 0], 1)) / 2.5 + BCE_MEAN
    loss = masked_multitask_loss(MT_LOGITS, MT_TARGETS, MT_MASK, [SINGLE], class_weight=w,
                                 label_smoothing=eps)
    assert loss.item() == pytest.approx(hand, rel=1e-6)


def test_multitask_loss_attribute_weights_scale_each_term():
    from tagger.train.losses import masked_multitask_loss

    omega = torch.tensor([2.0, 2.0, 2.0, 3.0])
    loss = masked_multitask_loss(MT_LOGITS, MT_TARGETS, MT_MASK, [SINGLE], attribute_weights=omega)
    assert loss.item() == pytest.approx(2 * (CE0 + CE1) / 2 + 3 * BCE_MEAN, rel=1e-6)


def test_multitask_loss_rows_with_more_than_one_value_are_not_cross_entropy_rows():
    from tagger.train.losses import masked_multitask_loss

    targets = MT_TARGETS.clone()
    targets[1, 0] = 1.0  # row 1 now claims two values: not a single-label row
    loss = masked_multitask_loss(MT_LOGITS, targets, MT_MASK, [SINGLE])
    assert loss.item() == pytest.approx(CE0 + BCE_MEAN, rel=1e-6)


def test_multitask_loss_without_known_rows_is_zero_and_differentiable():
    from tagger.train.losses import masked_multitask_loss

    logits = MT_LOGITS.clone().requires_grad_(True)
    loss = masked_multitask_loss(logits, MT_TARGETS, torch.zeros_like(MT_MASK), [SINGLE])
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()


@pytest.mark.parametrize("kind", ["bce", "focal", "asl"])
def test_multitask_loss_head_sigmoid_is_exactly_the_multilabel_loss(kind):
    from tagger.train.losses import masked_multilabel_loss, masked_multitask_loss

    logits, targets, mask = _random_batch(2)
    pw = torch.tensor([1.0, 2.0, 3.0, 0.5, 1.0])
    expected = masked_multilabel_loss(logits, targets, mask, pw, kind=kind)
    for omega in (None, torch.ones(5)):
        got = masked_multitask_loss(logits, targets, mask, (), pw, torch.full((5,), 3.0),
                                    label_smoothing=0.1, attribute_weights=omega, kind=kind)
        assert torch.equal(got, expected)


# Class weights: outputs 0-2 a single attribute, 3 a multi one. Known single rows: value 0
# three times, value 1 once, value 2 never; row 4 unknown, row 5 has two values (not counted).
CW_TARGETS = np.array([[1, 0, 0, 1], [1, 0, 0, 0], [1, 0, 0, 1], [0, 1, 0, 0],
                       [0, 1, 0, 1], [1, 1, 0, 0]], dtype=np.float32)
CW_MASK = np.array([[1, 1, 1, 1]] * 4 + [[0, 0, 0, 1], [1, 1, 1, 1]], dtype=bool)


def test_class_weights_linear_is_inverse_frequency_with_mean_one():
    from tagger.train.losses import compute_class_weights

    # 1/3 and 1/1, normalised to mean 1 over the values with rows: 0.5 and 1.5
    w = compute_class_weights(CW_TARGETS, CW_MASK, [SINGLE], "linear")
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [0.5, 1.5, 1.0, 1.0], rtol=1e-6)


def test_class_weights_sqrt_none_and_clip():
    from tagger.train.losses import compute_class_weights

    s3 = math.sqrt(3)  # 1/sqrt(3) and 1, over their mean (1/sqrt(3) + 1) / 2
    np.testing.assert_allclose(compute_class_weights(CW_TARGETS, CW_MASK, [SINGLE], "sqrt"),
                               [2 / (1 + s3), 2 * s3 / (1 + s3), 1.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(compute_class_weights(CW_TARGETS, CW_MASK, [SINGLE], "none"), np.ones(4))
    np.testing.assert_allclose(compute_class_weights(CW_TARGETS, CW_MASK, [SINGLE], "linear", max_weight=1.2),
                               [1 / 1.2, 1.2, 1.0, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown class_weight mode"):
        compute_class_weights(CW_TARGETS, CW_MASK, [SINGLE], "log")
