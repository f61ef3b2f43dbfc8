"""The nightly run in one process: ingest tonight's export, then tag what is new or changed,
decoding each new image once.

`tagger ingest` followed by `tagger tag` decodes a new image twice: ingest decodes the photo
to store its normalised JPEG, and the tag run decodes that JPEG again to score it. Here
ingest's `on_image` hook hands the pixels of every image it stores (before JPEG encoding)
to the tag run in the same process: each is fitted to the model's input size on the
fetching thread (tagger.data.images.fit_square), held by image hash, and the tag run scores
it without reading its shard (ImageScorer.score's `images`). Only products whose image was
not decoded tonight are read back from the shards: a changed label, a new model, an image
whose content was stored already, or more new images than HELD_BYTES holds.

Everything else is the two steps as they are: ingest_catalog (its lock, rejects, guards
and atomic commits) then tag_catalog (its lock, selection, write order and run id), with
the model version resolved once before both, so the images are held at the size of the
model that scores them. A re-run ingests nothing new, so it decodes nothing and tags like
`tagger tag` (a re-run of a run id replaces that run's output).

Tags equal those of ingest + tag but for the stored JPEG's loss: a held image is the
pixels the JPEG was encoded from (quality 90), fitted the same way, so a score can differ
by what that loss moves it (tests/tag/test_nightly.py: within NIGHTLY_SCORE_TOL). Held
images serve the ONNX Runtime path (the CPU default); where a run scores with torch (CUDA,
bf16) none are held and every image is read from its shard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date

import numpy as np

from catalog_schemas.taxonomy import Taxonomy
from tagger.config import IngestConfig, TagConfig
from tagger.data.images import fit_square
from tagger.ingest.run import IngestResult, ingest_catalog
from tagger.io.storage import open_storage
from tagger.model.production import resolve_version
from tagger.model.runtime import resolve_runtime
from tagger.model.scoring import resolve_device_type
from tagger.model.versions import ModelNotFound, read_card
from tagger.tag.run import TagResult, tag_catalog

log = logging.getLogger(__name__)

# Model inputs held between ingest and tagging: 2 GiB is ~75,000 images at 96 px and ~4,900
# at 380 px; a bigger night reads the rest back from the shards, as `tagger tag` does.
HELD_BYTES = 2 << 30
# The largest score difference to ingest + tag that the stored JPEG's loss (quality 90) may
# cause: what tests/tag/test_nightly.py checks, with room above the measured difference.
NIGHTLY_SCORE_TOL = 0.05


class HeldImages(Mapping):
    """Model inputs (uint8 [size, size, 3]) by image hash, filled by ingest's fetching
    threads (`add` is ingest_catalog's on_image hook), at most `max_bytes` of them."""

    def __init__(self, size: int, max_bytes: int = HELD_BYTES):
        self.size, self.max_bytes = size, max_bytes
        self._images: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.over_limit = 0  # images not held: read back from their shard

    def add(self, image_hash: str, pixels: np.ndarray) -> None:
        x = fit_square(pixels, self.size)
        with self._lock:
            if image_hash in self._images:
                return
            if self.bytes + x.nbytes > self.max_bytes:
                self.over_limit += 1
                return
            self._images[image_hash] = x
            self.bytes += x.nbytes

    def __getitem__(self, image_hash: str) -> np.ndarray:
        return self._images[image_hash]

    def __iter__(self) -> Iterator[str]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)


@dataclass
class NightlyResult:
    """The ingest and tag results of one night, and how many images were scored from memory."""

    ingest: IngestResult
    tag: TagResult
    held_images: int = 0  # decoded once by ingest, scored from memory
    held_over_limit: int = 0  # decoded by ingest but read back from shards (HELD_BYTES)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)  # the two results are dataclasses too: their to_dict is asdict


def run_nightly(
    catalog: str,
    taxonomy: Taxonomy | str,
    lake: str,
    ingest_config: IngestConfig | None = None,
    tag_config: TagConfig | None = None,
    *,
    model_version: str | None = None,
    ingest_run_id: str | None = None,
    tag_run_id: str | None = None,
    run_date: date | None = None,
    held_bytes: int = HELD_BYTES,
) -> NightlyResult:
    """Ingest `catalog` into `lake`, then tag what is new or changed with `model_version`
    (default: the lake's production version), each new image decoded once."""
    t0 = time.perf_counter()
    tag_config = tag_config or TagConfig()
    storage = open_storage(lake)
    notes: list[str] = []
    try:  # once, before both steps: the held images must have the scoring model's size
        card = read_card(storage, resolve_version(storage, model_version))
        version, size = card.version, card.data_config.image_size
    except ModelNotFound:
        if model_version:
            raise
        version, size = None, None  # no model yet: ingest, and let the tag run say so
    held = None
    if size is not None and _scores_with_onnx(tag_config):
        held = HeldImages(size, held_bytes)
    elif size is not None:
        notes.append("scored with torch: new images are read back from their shards")
    ingested = ingest_catalog(catalog, taxonomy, lake, ingest_config, run_id=ingest_run_id,
                              on_image=held.add if held is not None else None)
    tagged = tag_catalog(lake, model_version=version, run_id=tag_run_id, run_date=run_date,
                         config=tag_config, images=held)
    result = NightlyResult(ingested, tagged, len(held or ()), held.over_limit if held else 0,
                           round(time.perf_counter() - t0, 3), notes)
    log.info("nightly: %d new and %d changed products, %d tagged (%d images from memory) in %.1fs",
             ingested.new, ingested.changed, tagged.tagged, result.held_images, result.seconds)
    return result


def _scores_with_onnx(config: TagConfig) -> bool:
    """Whether the tag run will score with ONNX Runtime, the path that uses held images."""
    try:
        return resolve_runtime(config.runtime, resolve_device_type(config.device),
                               config.precision) == "onnx"
    except ValueError:  # a forced runtime that cannot run here: the tag run says why
        return False
