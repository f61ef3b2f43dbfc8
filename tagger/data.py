"""A torch Dataset over the lake's image shards, and the albumentations transforms.

Each DataLoader worker opens the lake itself (only the URI is pickled) and keeps the
shards it reads in a bounded cache, so the images are decoded from memory, not re-read.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from tagger.images import load_rgb
from tagger.ingest import IMAGES_PREFIX
from tagger.storage import Storage, open_storage, read_table

log = logging.getLogger(__name__)

WHITE = (255, 255, 255)


def create_transforms(image_size: int, mean: Sequence[float], std: Sequence[float], *, train: bool):
    """Square input of `image_size` px with the whole product in the picture.

    The product is fitted, not cropped, and padded with white (the usual studio background).
    Training adds what keeps labels true: mild scale/shift, a small rotation, a horizontal
    flip, brightness/contrast. No hue or colour jitter: colour is a label.
    """
    fit = [
        A.LongestMaxSize(max_size=image_size, interpolation=cv2.INTER_AREA),
        A.PadIfNeeded(image_size, image_size, border_mode=cv2.BORDER_CONSTANT, fill=WHITE),
    ]
    augment = [
        A.Affine(scale=(0.85, 1.1), translate_percent=(-0.06, 0.06), rotate=(-10, 10),
                 border_mode=cv2.BORDER_CONSTANT, fill=WHITE, p=0.8),
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ] if train else []
    return A.Compose([*fit, *augment, A.Normalize(mean=mean, std=std), ToTensorV2()])


class ShardCache:
    """Image bytes by hash from Parquet shards, keeping the most recent shards in memory."""

    def __init__(self, lake: str, max_bytes: int = 2 << 30):
        self.lake, self.max_bytes = lake, max_bytes
        self._storage: Storage | None = None
        self._shards: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._sizes: dict[str, int] = {}

    def __getstate__(self):  # workers get the URI, not open clients or cached shards
        return {"lake": self.lake, "max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(**state)

    def get(self, shard: str, image_hash: str) -> bytes:
        images = self._shards.get(shard)
        if images is None:
            images = self._load(shard)
        else:
            self._shards.move_to_end(shard)
        return images[image_hash]

    def _load(self, shard: str) -> dict[str, bytes]:
        if self._storage is None:
            self._storage = open_storage(self.lake)
        table = read_table(self._storage, f"{IMAGES_PREFIX}/{shard}")
        images = dict(zip(table["image_hash"].to_pylist(), table["data"].to_pylist()))
        self._shards[shard] = images
        self._sizes[shard] = sum(len(b) for b in images.values())
        while len(self._shards) > 1 and sum(self._sizes.values()) > self.max_bytes:
            old, _ = self._shards.popitem(last=False)
            del self._sizes[old]
        return images


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
        if self.targets is None:
            return x, i
        return x, torch.from_numpy(self.targets[i]), torch.from_numpy(self.mask[i])


def order_by_shard(shards: Sequence[str]) -> np.ndarray:
    """Indices that visit products shard by shard (sequential reads for inference)."""
    return np.argsort(np.asarray(shards, dtype=object), kind="stable")
