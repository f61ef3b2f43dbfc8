"""How much the photo counts against the title, per attribute, chosen on validation.

A model that fuses the photo with the product's text (tagger.model.text) computes each
logit as text part + bias + image part. Trained end to end, the two parts share the work,
and on attributes the title usually states (gender, category, article type) the photo can
cost accuracy: on the real catalog the fused model was below the same text features alone
on those three (benchmarks/README.md). Trained with image dropout, the text part alone is a
title-only classifier, so `text part + bias + w * image part` blends the title-only and the
fused decision in logit space: w 0 decides from the title alone, 1 as trained. Per
single-choice attribute, w is chosen from WEIGHTS on the validation logits by top-1
accuracy plus macro-F1 with the prior shift's one-standard-error rule
(tagger.quality.prior_shift): the largest w, the closest to the model as trained, whose
score is within one bootstrap standard error of the best.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from tagger.quality.prior_shift import choose_per_attribute

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def choose_image_weight(blended: Callable[[float], np.ndarray], targets: np.ndarray,
                        mask: np.ndarray, slices: Mapping[str, slice],
                        weights=WEIGHTS) -> dict[str, float]:
    """The photo's weight w per single-choice attribute of `slices` (name -> output slice).

    `blended(w)`: the validation logits [N, K] with the image part weighted by w, as the
    scorers compute them (a product's several images pooled after the blend, which max
    pooling does not commute with)."""
    return choose_per_attribute([(w, blended(w)) for w in sorted(weights, reverse=True)],
                                targets, mask, slices)
