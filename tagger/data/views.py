"""A product's several images (views): every image of every product in one flat list to be
scored, and the per-image logits pooled back into one row per product.

Training sees one view of a product per visit, drawn at random (ProductImages with
views="sample"); validation, test, evaluation and tagging score every view and pool the
logits per product, as the card says (ModelCard.image_pooling, chosen on validation: the
mean of the views' logits, or their maximum). A product with one image is its image's
logits either way. No torch here: the ONNX scoring path pools with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# The poolings training chooses between. A card may also say "first": its first image
# alone (cards from before several images, whose thresholds were tuned on one image).
POOLINGS = ("mean", "max")

# A product's more_images cell (catalog_schemas.tables.IMAGE_REF rows) or None.
MoreImages = Sequence[Mapping[str, str | None]] | None


@dataclass(frozen=True)
class Views:
    """Every image of `products` products, product by product: image i is one of product
    owners[i]'s (their first image first), in the lake's shard `shards[i]` by `hashes[i]`."""

    shards: list[str]
    hashes: list[str]
    owners: np.ndarray  # int64 [images], non-decreasing
    products: int

    @classmethod
    def of(cls, shards: Sequence[str], hashes: Sequence[str],
           more: Sequence[MoreImages] | None = None) -> Views:
        """The views of products whose first images are (`shards`, `hashes`) and whose other
        images are `more` (their more_images cells; None: none has any)."""
        if more is None or not any(more):
            return cls(list(shards), list(hashes), np.arange(len(hashes), dtype=np.int64), len(hashes))
        if len(more) != len(hashes):
            raise ValueError(f"{len(more)} more_images for {len(hashes)} products")
        out_shards, out_hashes, owners = [], [], []
        for p, (shard, image_hash, extra) in enumerate(zip(shards, hashes, more)):
            out_shards.append(shard)
            out_hashes.append(image_hash)
            owners.append(p)
            for ref in extra or ():
                out_shards.append(ref["image_shard"])
                out_hashes.append(ref["image_hash"])
                owners.append(p)
        return cls(out_shards, out_hashes, np.asarray(owners, np.int64), len(hashes))

    @property
    def several(self) -> bool:
        """Whether any product has more than one image."""
        return len(self.hashes) > self.products

    @property
    def starts(self) -> np.ndarray:
        """Index of each product's first view."""
        return np.searchsorted(self.owners, np.arange(self.products))

    @property
    def counts(self) -> np.ndarray:
        """How many views each product has."""
        return np.bincount(self.owners, minlength=self.products)

    def spread(self, values: Sequence):
        """A per-product sequence (texts, targets) repeated for each of its views."""
        if not self.several:
            return values
        if isinstance(values, np.ndarray):
            return values[self.owners]
        return [values[p] for p in self.owners]

    def pool(self, logits: np.ndarray, how: str = "mean") -> np.ndarray:
        """[images, K] logits -> [products, K]: the mean or the maximum of each product's
        views ("first": its first view's)."""
        if len(logits) != len(self.hashes):
            raise ValueError(f"{len(logits)} logits for {len(self.hashes)} views")
        if not self.several:
            return logits
        starts = self.starts
        if how == "first":
            return logits[starts]
        if how == "max":
            return np.maximum.reduceat(logits, starts, axis=0)
        if how == "mean":
            return np.add.reduceat(logits, starts, axis=0) / self.counts.astype(logits.dtype)[:, None]
        raise ValueError(f"unknown image pooling {how!r}: use one of {POOLINGS} or 'first'")
