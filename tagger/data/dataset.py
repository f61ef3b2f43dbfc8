"""A torch Dataset over the lake's image shards.

Each DataLoader worker opens the lake itself (only the URI is pickled) and keeps the
shards it reads in a bounded cache, so the images are decoded from memory, not re-read.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tagger.data.images import load_rgb
from tagger.io.storage import Storage, open_storage, read_table
from tagger.lake import IMAGES_PREFIX

log = logging.getLogger(__name__)


class ShardCache:
    """Image bytes by hash from Parquet shards, keeping the most recent shards in memory."""

    def __init__(self, lake: str, max_bytes: int = 2 << 30):
        self.lake, self.max_bytes = lake, max_bytes
        self._storage: Storage | None = None
        self._shards: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.reads, self.bytes_read = 0, 0  # shards loaded and their image bytes (benchmarks, tests)

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
        self.reads, self.bytes_read = self.reads + 1, self.bytes_read + self._sizes[shard]
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
        if isinstance(x, np.ndarray):  # create_transforms: uint8 HWC, normalised per batch
            x = torch.from_numpy(np.ascontiguousarray(x))
        if self.targets is None:
            return x, i
        return x, torch.from_numpy(self.targets[i]), torch.from_numpy(self.mask[i])


def order_by_shard(shards: Sequence[str]) -> np.ndarray:
    """Indices that visit products shard by shard (sequential reads for inference)."""
    return np.argsort(np.asarray(shards, dtype=object), kind="stable")
