"""A torch Dataset over the lake's image shards.

Each DataLoader worker opens the lake itself (only the URI is pickled) and keeps the
shards it reads in a bounded cache, so the images are decoded from memory, not re-read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from catalog_schemas.card import TextConfig
from tagger.data.images import load_rgb
from tagger.data.text import encode_text
from tagger.data.shards import ShardCache, order_by_shard

__all__ = ["ProductImages", "ShardCache", "order_by_shard"]  # the shard cache lives in tagger.data.shards

log = logging.getLogger(__name__)


class ProductImages(Dataset):
    """(image tensor, targets, mask) per product; (image, index) when there are no labels.
    With a `text_config` the image is (image, tokens): the product's text encoded too
    (tagger.data.text), what a model that reads text takes beside the image."""

    def __init__(
        self,
        lake: str,
        shards: Sequence[str],
        hashes: Sequence[str],
        transform,
        targets: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        *,
        texts: Sequence[str | None] | None = None,
        text_config: TextConfig | None = None,
    ):
        self.shards, self.hashes = list(shards), list(hashes)
        self.transform, self.targets, self.mask = transform, targets, mask
        self.texts = list(texts) if texts is not None else None
        if self.texts is not None and len(self.texts) != len(self.hashes):
            raise ValueError(f"{len(self.texts)} texts for {len(self.hashes)} images")
        self.text_config = text_config
        self.cache = ShardCache(lake)

    def __len__(self) -> int:
        return len(self.hashes)

    def __getitem__(self, i: int):
        image = load_rgb(self.cache.get(self.shards[i], self.hashes[i]))
        x = self.transform(image=image)["image"]
        if isinstance(x, np.ndarray):  # create_transforms: uint8 HWC, normalised per batch
            x = torch.from_numpy(np.ascontiguousarray(x))
        if self.text_config is not None:
            text = self.texts[i] if self.texts is not None else None
            x = (x, torch.from_numpy(encode_text(text, self.text_config)))
        if self.targets is None:
            return x, i
        return x, torch.from_numpy(self.targets[i]), torch.from_numpy(self.mask[i])
