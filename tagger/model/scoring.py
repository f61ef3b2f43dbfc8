"""From a model card to scores: the arrays a card's decisions need.

A card stores thresholds and temperatures by attribute and value (readable, and matched by
name, never by position); scoring needs them as vectors in the order of the model's outputs.
card_arrays is the one place that turns one into the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from catalog_schemas.card import CardError, ModelCard
from tagger.labels import vector_from_values
from tagger.quality.calibration import temperature_vector


@dataclass(frozen=True)
class CardArrays:
    """float32 [K] vectors in output order."""

    thresholds: np.ndarray  # decision threshold per output
    auto_thresholds: np.ndarray | None  # auto-publish threshold (+inf: never); None: no target
    temperature: np.ndarray  # 1.0 where the card has no temperature


def card_arrays(card: ModelCard) -> CardArrays:
    """The card's thresholds, auto-publish thresholds and temperatures as output vectors."""
    tax = card.taxonomy
    try:
        thresholds = vector_from_values(tax, card.thresholds)
        auto = None if not card.auto_thresholds else vector_from_values(tax, card.auto_thresholds)
    except ValueError as e:  # parse_card checks this too; a card built in memory may not be
        raise CardError(f"Model {card.version}: {e}") from None
    return CardArrays(thresholds, auto, temperature_vector(card.temperature, tax.slices, tax.num_outputs))
