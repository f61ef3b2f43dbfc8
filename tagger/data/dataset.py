"""A torch Dataset over the lake's image shards.

Each DataLoader worker opens the lake itself (only the URI is pickled) and keeps the
shards it reads in a bounded cache, so the images are decoded from memory, not re-read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from catalog_schemas.card import TextConfig
from tagger.data.images import load_rgb
from tagger.data.text import encode_text
from tagger.data.shards import ShardCache, order_by_shard
from tagger.data.views import MoreImages, Views

__all__ = ["ProductImages", "ShardCache", "order_by_shard"]  # the shard cache lives in tagger.data.shards

log = logging.getLogger(__name__)


class ProductImages(Dataset):
    """(image tensor, targets, mask) per product; (image, index) when there are no labels.
    With a `text_config` the image is (image, tokens): the product's text encoded too
    (tagger.data.text), what a model that reads text takes beside the image.

    A product's other images (`more`, its more_images cells, tagger.data.views) are seen as
    `views` says: "sample" draws one of the product's images at random on every visit (a
    product per item: training), "all" gives every image as an item of its own, with its
    product's targets and text (`pool` turns their logits back into one row per product).
    Without `more` both are the one image per product of a catalog without extra images."""

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
        more: Sequence[MoreImages] | None = None,
        views: Literal["sample", "all"] = "all",
    ):
        self.views = Views.of(shards, hashes, more)
        self.sample = views == "sample" and self.views.several
        if self.sample:  # each product's first view and how many it has
            self._starts, self._counts = self.views.starts, self.views.counts
        # what an item is: a product (sampled views) or an image
        self.shards, self.hashes = (list(shards), list(hashes)) if self.sample else (self.views.shards, self.views.hashes)
        self.transform, self.targets, self.mask = transform, targets, mask
        self.texts = list(texts) if texts is not None else None
        if self.texts is not None and len(self.texts) != self.views.products:
            raise ValueError(f"{len(self.texts)} texts for {self.views.products} products")
        self.text_config = text_config
        self.cache = ShardCache(lake)
        self._seeded_in: int | None = None  # the process whose torch RNG seeded the transform

    def _seed_transform(self) -> None:
        """Seed an albumentations Compose from torch's RNG, once per process.

        A Compose draws from its own generator, seeded from OS entropy unless told, so
        augmentations (and the trained model) would differ between runs of the same seed;
        and every loader worker unpickles the same generator state, so N workers would apply
        the same augmentation sequence. torch's RNG is seeded by the run (torch.manual_seed)
        in the main process and by the loader's generator and worker id in each worker."""
        pid = os.getpid()
        if self._seeded_in != pid:
            self._seeded_in = pid
            if hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(int(torch.randint(2**31 - 1, ()).item()))

    def __len__(self) -> int:
        return len(self.hashes)

    def _image(self, i: int) -> tuple[int, bytes]:
        """(product, stored image bytes) of item i."""
        if not self.sample:
            return int(self.views.owners[i]), self.cache.get(self.shards[i], self.hashes[i])
        first, n = int(self._starts[i]), int(self._counts[i])
        # torch's generator: seeded per DataLoader worker and by the run's seed
        k = first + int(torch.randint(n, ()).item()) if n > 1 else first
        return i, self.cache.get(self.views.shards[k], self.views.hashes[k])

    def __getitem__(self, i: int):
        self._seed_transform()
        p, data = self._image(i)
        x = self.transform(image=load_rgb(data))["image"]
        if isinstance(x, np.ndarray):  # create_transforms: uint8 HWC, normalised per batch
            x = torch.from_numpy(np.ascontiguousarray(x))
        if self.text_config is not None:
            text = self.texts[p] if self.texts is not None else None
            x = (x, torch.from_numpy(encode_text(text, self.text_config)))
        if self.targets is None:
            return x, p
        return x, torch.from_numpy(self.targets[p]), torch.from_numpy(self.mask[p])

    def pool(self, logits: np.ndarray, how: str = "mean") -> np.ndarray:
        """The items' logits as one row per product (Views.pool; sampled items are products)."""
        return logits if self.sample else self.views.pool(logits, how)
