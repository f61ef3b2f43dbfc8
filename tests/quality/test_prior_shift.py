"""The prior shift: per softmax attribute, the share of the class weighting its decisions undo,
chosen on validation (tagger/quality/prior_shift.py), and its fold into the output bias."""

import numpy as np
import torch

from catalog_schemas.card import TextConfig
from tagger.model.text import ImageTextModel
from tagger.model.factory import create_model, fold_into_output_bias
from tagger.quality.prior_shift import TAUS, choose_prior_shift

WEIGHTS = np.array([16.0, 1.0, 1 / 16])  # a quarter of it is still a clear shift


def _balanced_logits(rng, n=3000):
    """Three balanced, overlapping classes: the log-posteriors of 1-d Gaussians at -2, 0, 2
    (the best decisions for accuracy and for macro-F1 alike), and the labels."""
    y = np.repeat(np.arange(3), n // 3)
    x = rng.normal((y - 1) * 2.0, 1.0)
    logits = -0.5 * (x[:, None] - np.array([-2.0, 0.0, 2.0])[None, :]) ** 2
    return logits, y


def test_logits_biased_by_the_weights_are_shifted_back_and_unbiased_ones_are_left():
    rng = np.random.default_rng(0)
    z, y = _balanced_logits(rng)
    onehot = np.eye(3)[y]
    # outputs 0-2: biased as training with WEIGHTS biases them; 3-5: unbiased, same weights;
    # 6-8: weights all 1 (nothing to undo)
    logits = np.concatenate([z + np.log(WEIGHTS), z, z + np.log(WEIGHTS)], axis=1)
    targets = np.concatenate([onehot] * 3, axis=1)
    mask = np.ones_like(targets)
    class_weight = np.concatenate([WEIGHTS, WEIGHTS, np.ones(3)])
    slices = {"biased": slice(0, 3), "unbiased": slice(3, 6), "unweighted": slice(6, 9)}

    shift, taus = choose_prior_shift(logits, targets, mask, slices, class_weight)

    assert taus == {"biased": 1.0, "unbiased": 0.0, "unweighted": 0.0}
    np.testing.assert_allclose(shift[:3], -np.log(WEIGHTS), rtol=1e-6)
    assert not shift[3:].any()
    assert shift.dtype == np.float32 and set(taus.values()) <= set(TAUS)


def test_rows_of_unknown_value_do_not_choose():
    rng = np.random.default_rng(1)
    z, y = _balanced_logits(rng)
    logits = np.concatenate([z + np.log(WEIGHTS), np.zeros((3000, 3))])
    # as many rows again, all labelled with the value the shift would take away, but unknown
    targets = np.concatenate([np.eye(3)[y], np.tile([1.0, 0, 0], (3000, 1))])
    mask = np.concatenate([np.ones((len(y), 3)), np.zeros((3000, 3))])
    _, taus = choose_prior_shift(logits, targets, mask, {"a": slice(0, 3)}, WEIGHTS)
    assert taus == {"a": 1.0}
    # with those rows known, the first value's count rises and the choice changes
    _, with_them = choose_prior_shift(logits, targets, np.ones_like(mask), {"a": slice(0, 3)}, WEIGHTS)
    assert with_them != taus


def test_an_attribute_without_known_rows_keeps_tau_zero():
    shift, taus = choose_prior_shift(np.zeros((4, 3)), np.zeros((4, 3)), np.zeros((4, 3)),
                                     {"a": slice(0, 3)}, WEIGHTS)
    assert taus == {"a": 0.0} and not shift.any()


def test_fold_into_output_bias_shifts_every_output_of_a_fused_and_a_timm_model():
    shift = np.linspace(-1, 1, 5).astype(np.float32)
    torch.manual_seed(0)
    text = ImageTextModel(None, TextConfig(buckets=64, dim=8), 5).eval()
    tokens = torch.randint(0, 65, (3, 12))
    image = create_model("test_efficientnet", 5, pretrained=False).eval()
    images = torch.rand(3, 3, 48, 48)
    for model, call in ((text, lambda m: m(None, tokens)), (image, lambda m: m(images))):
        with torch.no_grad():
            before = call(model)
            fold_into_output_bias(model, shift)
            after = call(model)
        np.testing.assert_allclose((after - before).numpy(), np.broadcast_to(shift, before.shape), atol=1e-5)


def test_the_score_is_sklearns_top1_plus_macro_f1_also_per_bootstrap_resample():
    from sklearn.metrics import accuracy_score, f1_score

    from tagger.quality.prior_shift import top1_plus_macro_f1

    rng = np.random.default_rng(1)
    y, p = rng.integers(4, size=300), rng.integers(5, size=300)  # value 4 predicted, never true
    want = accuracy_score(y, p) + f1_score(y, p, labels=np.unique(y), average="macro")
    assert np.isclose(top1_plus_macro_f1(y, p), want)
    rows = rng.integers(300, size=300)
    counts = np.bincount(rows, minlength=300)[None, :]
    resampled = accuracy_score(y[rows], p[rows]) + f1_score(y[rows], p[rows], labels=np.unique(y[rows]),
                                                            average="macro")
    assert np.isclose(top1_plus_macro_f1(y, p, counts, 5)[0], resampled)


def test_a_gain_within_the_noise_of_validation_keeps_the_decisions_as_trained():
    """One standard error: a setting that is best on validation by a hair (a few rows
    changed either way, as a rare value's handful does) is not taken; one that is better by
    far is."""
    from tagger.quality.prior_shift import choose_per_attribute, top1_plus_macro_f1

    rng = np.random.default_rng(0)
    z, y = _balanced_logits(rng, 900)
    targets, mask = np.eye(3)[y], np.ones((900, 3), bool)
    hair = z.copy()  # right about 3 more rows and wrong about 2 more: a net gain of one row
    wrong, right = np.flatnonzero(z.argmax(1) != y), np.flatnonzero(z.argmax(1) == y)
    hair[wrong[:3]] = np.eye(3)[y[wrong[:3]]] * 100
    hair[right[:2]] = np.eye(3)[(y[right[:2]] + 1) % 3] * 100
    far = z.copy()
    far[:, 1] -= 100  # never the middle value: a third of the rows wrong
    assert top1_plus_macro_f1(y, hair.argmax(1)) > top1_plus_macro_f1(y, z.argmax(1))  # best, by a hair
    slices = {"a": slice(0, 3)}
    assert choose_per_attribute([(0.0, z), (1.0, hair)], targets, mask, slices) == {"a": 0.0}
    assert choose_per_attribute([(0.0, far), (1.0, z)], targets, mask, slices) == {"a": 1.0}
