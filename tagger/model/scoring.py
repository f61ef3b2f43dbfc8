"""From a model card to scores: the arrays a card's decisions need, and the one pipeline
that turns product images into calibrated scores.

A card stores thresholds and temperatures by attribute and value (readable, and matched by
name, never by position); scoring needs them as vectors in the order of the model's outputs.
card_arrays is the one place that turns one into the other.

A tag run and an evaluation score images the same way (card transforms, normalisation on
the device, the configured runtime, the card's temperatures): ImageScorer is that chain,
written once, so an evaluation measures exactly the scores a tag run publishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from catalog_schemas.card import CardError, ModelCard
from tagger.config import TagConfig
from tagger.data.dataset import ProductImages
from tagger.data.loader import create_loader
from tagger.data.transforms import BatchNormalize, create_transforms
from tagger.labels import softmax_slices, vector_from_values
from tagger.model.device import resolve_device
from tagger.model.runtime import predict_with_runtime
from tagger.quality.calibration import apply_temperature, temperature_vector


@dataclass(frozen=True)
class CardArrays:
    """float32 [K] vectors in output order."""

    thresholds: np.ndarray  # decision threshold per output
    auto_thresholds: np.ndarray | None  # auto-publish threshold (+inf: never); None: no target
    temperature: np.ndarray  # 1.0 where the card has no temperature
    softmax_slices: tuple[slice, ...] = ()  # attributes scored as one softmax, argmax decided




def card_arrays(card: ModelCard) -> CardArrays:
    """The card's thresholds, auto-publish thresholds and temperatures as output vectors,
    and the slices its head scores as softmaxes."""
    tax = card.taxonomy
    try:
        thresholds = vector_from_values(tax, card.thresholds)
        auto = None if not card.auto_thresholds else vector_from_values(tax, card.auto_thresholds)
    except ValueError as e:  # parse_card checks this too; a card built in memory may not be
        raise CardError(f"Model {card.version}: {e}") from None
    return CardArrays(thresholds, auto, temperature_vector(card.temperature, tax.slices, tax.num_outputs),
                      softmax_slices(tax, card.head))


@dataclass(frozen=True)
class Scores:
    """float32 [N, K] per image, in output order."""

    logits: np.ndarray  # raw model outputs
    scores: np.ndarray  # sigmoid(logit / T), or a softmax head's softmax(logits / T), with
    # the card's temperatures: what decisions use


class ImageScorer:
    """A loaded model and its card, ready to score product images.

    The transform, the normalisation, the device and the card's vectors are made once and
    reused by every call: a tag run scores its products chunk by chunk, and the
    normalisation keeps one input buffer per device across chunks (BatchNormalize reuse)."""

    def __init__(self, model: nn.Module, card: ModelCard, config: TagConfig):
        self.model, self.card, self.config = model, card, config
        self.arrays = card_arrays(card)
        self.device = resolve_device(config.device)
        self._transform = create_transforms(card.data_config.image_size, train=False)
        self._normalize = BatchNormalize.from_config(card.data_config, reuse=True)

    def score(self, lake: str, shards: Sequence[str], hashes: Sequence[str], *, desc: str) -> Scores:
        """Scores of the images `hashes` (in the lake's image shards `shards`), in that order."""
        images = ProductImages(lake, shards, hashes, self._transform)
        loader = create_loader(images, self.config.batch_size, self.config.workers, device=self.device)
        logits = predict_with_runtime(self.model, loader, self.device, runtime=self.config.runtime,
                                      precision=self.config.precision, desc=desc, logits=True,
                                      normalize=self._normalize)
        return Scores(logits, apply_temperature(logits, self.arrays.temperature,
                                                self.arrays.softmax_slices))


def score_images(model: nn.Module, card: ModelCard, lake: str, shards: Sequence[str],
                 hashes: Sequence[str], config: TagConfig, *, desc: str) -> Scores:
    """Scores of one set of images (ImageScorer for a single call)."""
    return ImageScorer(model, card, config).score(lake, shards, hashes, desc=desc)
