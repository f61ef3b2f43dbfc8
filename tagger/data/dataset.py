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

from tagger.data.images import load_rgb
from tagger.data.shards import ShardCache, order_by_shard

__all__ = ["ProductImages", "ShardCache", "order_by_shard"]  # the shard cache lives in tagger.data.shards

log = logging.getLogger(__name__)


class ProductImages(Dataset):
    """(image tensor, targets, mask) per product; (image, index) when there are no labels."""

    def __init__(
        self,
        lake: str,
        shards: Sequence[str],
        hashes: Sequence[str],
        transform,
        targets: np.ndarray | None = None,
        mask: np.ndarray | None = None,
    ):
        self.shards, self.hashes = list(shards), list(hashes)
        self.transform, self.targets, self.mask = transform, targets, mask
        self.cache = ShardCache(lake)

    def __len__(self) -> int:
        return len(self.hashes)

    def __getitem__(self, i: int):
        image = load_rgb(self.cache.get(self.shards[i], self.hashes[i]))
        x = self.transform(image=image)["image"]
        if isinstance(x, np.ndarray):  # create_transforms: uint8 HWC, normalised per batch
            x = torch.from_numpy(np.ascontiguousarray(x))
        if self.targets is None:
            return x, i
        return x, torch.from_numpy(self.targets[i]), torch.from_numpy(self.mask[i])
