"""Stored image bytes from the lake's Parquet image shards, for training, tagging and review.

No torch here: the ONNX scoring path reads shards through this module without importing it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from tagger.io.storage import Storage, open_storage, read_table
from tagger.lake import IMAGES_PREFIX


class ShardCache:
    """Image bytes by hash from Parquet shards, keeping the most recent shards in memory."""

    def __init__(self, lake: str, max_bytes: int = 2 << 30, max_shards: int | None = None):
        self.lake, self.max_bytes, self.max_shards = lake, max_bytes, max_shards
        self._storage: Storage | None = None
        self._shards: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.reads, self.bytes_read = 0, 0  # shards loaded and their image bytes (benchmarks, tests)

    def __getstate__(self):  # workers get the URI, not open clients or cached shards
        return {"lake": self.lake, "max_bytes": self.max_bytes, "max_shards": self.max_shards}

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
        while len(self._shards) > 1 and (sum(self._sizes.values()) > self.max_bytes
                                         or (self.max_shards and len(self._shards) > self.max_shards)):
            old, _ = self._shards.popitem(last=False)
            del self._sizes[old]
        return images


def order_by_shard(shards: Sequence[str]) -> np.ndarray:
    """Indices that visit products shard by shard (sequential reads for inference)."""
    return np.argsort(np.asarray(shards, dtype=object), kind="stable")
