"""MixUp / CutMix: exact small cases of the mixed batch and the blended masked loss."""

import numpy as np
import pytest
import torch

from tagger.config import TrainConfig
from tagger.train.losses import masked_multitask_loss
from tagger.train.mix import Mix, mix_batch, mix_generator, mixed_loss


def _x(n=4, h=8, w=6):
    return torch.arange(n * 3 * h * w, dtype=torch.float32).reshape(n, 3, h, w)


def test_off_by_default_is_the_identity():
    config = TrainConfig()
    assert mix_generator(config, 0) is None
    x = _x()
    out, mix = mix_batch(x, config, None)
    assert out is x and mix is None
    y, m = torch.ones(4, 2), torch.ones(4, 2, dtype=torch.bool)
    assert mixed_loss(lambda t, k: (t * k).sum(), y, m, None) == 8


def test_mixup_blends_images_with_a_permutation():
    config = TrainConfig(mixup=0.4)
    x = _x()
    out, mix = mix_batch(x, config, mix_generator(config, 3))
    assert 0 < mix.lam < 1 and sorted(mix.index.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(out, mix.lam * x + (1 - mix.lam) * x[mix.index])
    assert torch.equal(x, _x())  # the input batch is not changed


def test_mixing_is_reproducible_from_seed_and_epoch():
    config = TrainConfig(mixup=0.4, cutmix=1.0, seed=7)
    a = [mix_batch(_x(), config, mix_generator(config, 2)) for _ in range(2)]
    assert torch.equal(a[0][0], a[1][0]) and a[0][1].lam == a[1][1].lam
    other, _ = mix_batch(_x(), config, mix_generator(config, 3))
    assert not torch.equal(a[0][0], other)


def test_cutmix_pastes_one_box_and_lam_is_the_kept_area():
    config = TrainConfig(cutmix=1.0)
    rng = mix_generator(config, 0)
    x = _x(n=3, h=16, w=16)
    for _ in range(20):
        out, mix = mix_batch(x, config, rng)
        changed = (out != x).any(dim=1)  # [N, H, W]
        pasted_from_other = (out == x[mix.index]).all(dim=1)
        for i in range(3):
            if mix.index[i] == i:
                continue  # pasted from itself: nothing visible changes
            rows, cols = torch.nonzero(changed[i], as_tuple=True)
            if len(rows) == 0:
                assert mix.lam == pytest.approx(1.0)
                continue
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            # every pixel inside the bounding box came from the other image: one box
            assert bool(pasted_from_other[i, rows.min():rows.max() + 1, cols.min():cols.max() + 1].all())
            assert mix.lam == pytest.approx(1 - float(box) / (16 * 16))


def test_blended_loss_masks_each_images_unknown_labels():
    # Two products, one `multi`-style output block of 2; product 1 has output 1 unknown.
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m = torch.tensor([[True, True], [True, False]])
    mix = Mix(lam=0.75, index=torch.tensor([1, 0]))

    def loss_fn(t, k):
        return masked_multitask_loss(logits, t, k, (), None)

    got = mixed_loss(loss_fn, y, m, mix)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    own = (bce(logits[0], y[0], reduction="sum") + bce(logits[1, 0], y[1, 0])) / 3
    # against the shuffled labels: row 0 takes row 1's labels and mask (output 1 unknown)
    swapped = (bce(logits[0, 0], y[1, 0]) + bce(logits[1], y[0], reduction="sum")) / 3
    torch.testing.assert_close(got, 0.75 * own + 0.25 * swapped)


def test_blended_softmax_loss_equals_cross_entropy_of_blended_one_hots():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 2.0]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    m = torch.ones(2, 3, dtype=torch.bool)
    mix = Mix(lam=0.6, index=torch.tensor([1, 0]))
    heads = (slice(0, 3),)

    def loss_fn(t, k):
        return masked_multitask_loss(logits, t, k, heads, None)

    soft = 0.6 * y + 0.4 * y[[1, 0]]
    expected = torch.nn.functional.cross_entropy(logits, soft)
    torch.testing.assert_close(mixed_loss(loss_fn, y, m, mix), expected)


def test_a_single_image_batch_is_not_mixed():
    config = TrainConfig(mixup=1.0)
    x = _x(n=1)
    out, mix = mix_batch(x, config, mix_generator(config, 0))
    assert out is x and mix is None


def test_mix_options_are_validated():
    with pytest.raises(ValueError):
        TrainConfig(mixup=-1)
    assert np.isfinite(TrainConfig(cutmix=0.5).cutmix)
