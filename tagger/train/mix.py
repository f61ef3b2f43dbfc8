"""MixUp and CutMix for masked multi-task labels.

A batch is blended with a shuffled copy of itself (MixUp: the whole image; CutMix: a box
pasted in). Rather than blending the label vectors, which would turn a `single`
attribute's one-hot label into two half-labels the softmax head cannot take and mix a
known label with an unknown one, the loss is the same blend of two losses: the loss
against the batch's own labels and masks, and against the shuffled copy's (Zhang et al.
2018 use this form; for cross-entropy it is the same as blending one-hot targets). So a
label unknown for one of the two images simply adds nothing to that image's term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tagger.config import TrainConfig


@dataclass(frozen=True)
class Mix:
    """How a batch was mixed: the share `lam` of the original images and the permutation
    `index` that gave the other images."""

    lam: float
    index: torch.Tensor


def mix_generator(config: TrainConfig, epoch: int) -> np.random.Generator | None:
    """The RNG of the epoch's mixing, from seed and epoch only (a resumed run draws the
    same mixes; the global RNG, which augmentation and DDP tests rely on, is untouched).
    None when both MixUp and CutMix are off."""
    if not (config.mixup > 0 or config.cutmix > 0):
        return None
    return np.random.default_rng([config.seed, epoch])


def mix_batch(x: torch.Tensor, config: TrainConfig,
              generator: np.random.Generator | None) -> tuple[torch.Tensor, Mix | None]:
    """The mixed batch (a new tensor; `x` [N, C, H, W] is not changed) and how it was mixed;
    (x, None) when mixing is off or the batch has one image."""
    if generator is None or len(x) < 2:
        return x, None
    kinds = [k for k, alpha in (("mixup", config.mixup), ("cutmix", config.cutmix)) if alpha > 0]
    kind = kinds[int(generator.integers(len(kinds)))]
    alpha = config.mixup if kind == "mixup" else config.cutmix
    lam = float(generator.beta(alpha, alpha))
    index = torch.from_numpy(generator.permutation(len(x))).to(x.device)
    if kind == "mixup":
        return x * lam + x[index] * (1 - lam), Mix(lam, index)
    h, w = x.shape[-2:]
    top, left, bottom, right = _box(h, w, lam, generator)
    out = x.clone()
    out[..., top:bottom, left:right] = x[index][..., top:bottom, left:right]
    # The label share follows the pasted area actually used, after clipping at the border.
    return out, Mix(1.0 - (bottom - top) * (right - left) / (h * w), index)


def _box(h: int, w: int, lam: float, generator: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of about (1 - lam) of the image's area around a uniform centre, clipped."""
    cut = (1.0 - lam) ** 0.5
    bh, bw = int(h * cut), int(w * cut)
    cy, cx = int(generator.integers(h)), int(generator.integers(w))
    top, bottom = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    left, right = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    return top, left, bottom, right


def mixed_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y: torch.Tensor,
               m: torch.Tensor, mix: Mix | None) -> torch.Tensor:
    """loss_fn(targets, mask) for the batch's own labels, blended with the shuffled copy's
    by `mix`; just loss_fn(y, m) without mixing."""
    if mix is None:
        return loss_fn(y, m)
    return mix.lam * loss_fn(y, m) + (1 - mix.lam) * loss_fn(y[mix.index], m[mix.index])
