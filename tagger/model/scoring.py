"""From a model card to scores: the arrays a card's decisions need, and the one pipeline
that turns product images into calibrated scores.

A card stores thresholds and temperatures by attribute and value (readable, and matched by
name, never by position); scoring needs them as vectors in the order of the model's outputs.
card_arrays is the one place that turns one into the other.

A tag run and an evaluation score images the same way (card transforms, normalisation, the
configured runtime, the card's temperatures): ImageScorer is that chain, written once, so an
evaluation measures exactly the scores a tag run publishes.

The chain has two ways through it, which give the model the same uint8 pixels and the same
float32 normalisation, so they differ only by their kernels' rounding:

- ONNX Runtime (the CPU default): images are decoded, fitted (tagger.data.images.fit_square,
  the pixels of create_transforms) and normalised with numpy in this process, `workers`
  threads decoding the next batch while ONNX Runtime scores this one. torch and timm are
  not imported at all when the card's export is cached (tagger.model.runtime.card_session):
  the model is only loaded to export it.
- torch (CUDA, bf16/fp16, runtime='torch'): ProductImages, create_loader and BatchNormalize.

`images` (ONNX path): model inputs already in memory by image hash, used instead of
decoding the shard's copy: the new images of a nightly run, fitted from the pixels ingest
decoded (tagger.nightly), so each new image is decoded once per night.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from catalog_schemas.card import CardError, ModelCard
from tagger.config import TagConfig
from tagger.data.images import fit_square, load_rgb
from tagger.data.shards import ShardCache
from tagger.io.storage import Storage
from tagger.labels import softmax_slices, vector_from_values
from tagger.data.text import encode_texts
from tagger.data.views import MoreImages, Views
from tagger.model.runtime import OUTPUT, ExportError, card_session, onnx_session, resolve_runtime, session_feed
from tagger.model.versions import load_model, read_card
from tagger.quality.calibration import apply_temperature, temperature_vector

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

# Where a GPU driver shows itself (NVIDIA, WSL2, ROCm). Without one, device 'auto' is the CPU
# and torch is not imported to ask: torch.cuda.is_available() needs such a driver too.
_GPU_NODES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
_SHARDS_HELD = 4  # shards of stored images read at once: products come shard by shard


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


def resolve_device_type(device: str) -> str:
    """'cpu' or 'cuda' for TagConfig.device; 'auto' asks torch only where a GPU driver is
    present (or torch is imported already)."""
    if device != "auto":
        return device
    if "torch" not in sys.modules and not any(os.path.exists(p) for p in _GPU_NODES):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ImageScorer:
    """A model's card, and the model itself when needed, ready to score product images.

    The transform, the normalisation, the session or device and the card's vectors are made
    once and reused by every call: a tag run scores its products chunk by chunk. `model` is
    the torch model, or None with `load_model` (a callable returning it), which is called
    only when the model is needed: torch scoring, or an ONNX export not cached yet."""

    def __init__(self, model: nn.Module | None, card: ModelCard, config: TagConfig, *,
                 load_model: Callable[[], nn.Module] | None = None):
        if model is None and load_model is None:
            raise TypeError("ImageScorer needs a model or load_model")
        self._model, self._load_model = model, load_model
        self.card, self.config = card, config
        self.arrays = card_arrays(card)
        self.size = card.data_config.image_size
        self.runtime = resolve_runtime(config.runtime, resolve_device_type(config.device),
                                       config.precision)
        dc = card.data_config  # as BatchNormalize: (x - 255 mean) * 1 / (255 std), float32
        self._mean = np.array([255.0 * m for m in dc.mean], np.float32).reshape(1, -1, 1, 1)
        self._scale = np.array([1.0 / (255.0 * s) for s in dc.std], np.float32).reshape(1, -1, 1, 1)
        self._buffer: np.ndarray | None = None
        self._torch = None  # (transform, normalize, device) of the torch path, made on first use

    @classmethod
    def of_version(cls, storage: Storage, version: str, config: TagConfig) -> ImageScorer:
        """The scorer of a registered version: its card now, its weights only when needed."""
        return cls(None, read_card(storage, version), config,
                   load_model=lambda: load_model(storage, version)[0])

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            self._model = self._load_model()
        return self._model

    def score(self, lake: str, shards: Sequence[str], hashes: Sequence[str], *, desc: str,
              images: Mapping[str, np.ndarray] | None = None,
              texts: Sequence[str | None] | None = None,
              more: Sequence[MoreImages] | None = None) -> Scores:
        """Scores of the products whose images are `hashes` (in the lake's image shards
        `shards`) and whose texts are `texts` (None: products without text), in that order;
        an image in `images` (model input by hash, ONNX path) is not read from its shard.
        `texts` is required for a model that reads text: a model scored without the text it
        was trained with would publish its image-only guesses silently. `more`: the
        products' other images (more_images cells), each scored and pooled with the first
        as the card says (image_pooling; a card from before format 5 scores the first)."""
        if self.card.reads_text:
            if texts is None:
                raise ValueError(f"Model {self.card.version} reads the products' text "
                                 f"(inputs {self.card.inputs}): score(..., texts=...)")
            if len(texts) != len(hashes):
                raise ValueError(f"{len(texts)} texts for {len(hashes)} images")
        else:
            texts = None
        pooling = self.card.image_pooling
        views = Views.of(shards, hashes, None if pooling == "first" else more)
        shards, hashes = views.shards, views.hashes
        texts = None if texts is None else views.spread(texts)
        logits = None
        if self.runtime == "onnx":
            try:
                logits = self._onnx_logits(lake, shards, hashes, desc, images, texts)
            except ExportError as e:
                if self.config.runtime == "onnx":
                    raise
                log.warning("%s; scoring with torch instead", e)
                self.runtime = "torch"
        if logits is None:
            logits = self._torch_logits(lake, shards, hashes, desc, texts)
        logits = views.pool(logits, pooling)
        return Scores(logits, apply_temperature(logits, self.arrays.temperature,
                                                self.arrays.softmax_slices))

    def _torch_logits(self, lake, shards, hashes, desc, texts) -> np.ndarray:
        from tagger.data.dataset import ProductImages
        from tagger.data.loader import create_loader
        from tagger.data.transforms import BatchNormalize, create_transforms
        from tagger.model.device import resolve_device
        from tagger.model.predict import predict_scores

        if self._torch is None:
            self._torch = (create_transforms(self.size, train=False),
                           BatchNormalize.from_config(self.card.data_config, reuse=True),
                           resolve_device(self.config.device))
        transform, normalize, device = self._torch
        ds = ProductImages(lake, shards, hashes, transform, texts=texts, text_config=self.card.text)
        loader = create_loader(ds, self.config.batch_size,
                               self.config.workers, device=device)
        return predict_scores(self.model, loader, device, precision=self.config.precision, desc=desc,
                              logits=True, normalize=normalize)

    def _onnx_logits(self, lake, shards, hashes, desc, images, texts) -> np.ndarray:
        shape = (3, self.size, self.size)
        if self._load_model is None:  # a model in hand (maybe not the card's weights): its own export
            session = onnx_session(self._model, shape)
        else:  # a registered version: found by its card, loaded only to be exported
            session = card_session(self.card, shape, lambda: self.model)
        out = np.zeros((len(hashes), self.card.taxonomy.num_outputs), np.float32)
        t0, held = time.perf_counter(), 0
        for start, batch, from_memory in self._batches(lake, shards, hashes, images):
            tokens = None if texts is None else encode_texts(texts[start:start + len(batch)], self.card.text)
            feed = session_feed(session, self._normalise(batch), tokens)
            out[start:start + len(batch)] = session.run([OUTPUT], feed)[0]
            held += from_memory
        seconds = time.perf_counter() - t0
        log.info("%s: %d images (%d from memory) in %.1fs (%.0f img/s, onnxruntime fp32)", desc,
                 len(hashes), held, seconds, len(hashes) / max(seconds, 1e-9))
        return out

    def _batches(self, lake, shards, hashes, images) -> Iterator[tuple[int, np.ndarray, int]]:
        """(start, uint8 [B, S, S, 3], how many came from `images`) per batch, in order. Shard
        bytes are read here, in order; decoding runs on `workers` threads (PIL and OpenCV
        release the GIL), the next batch's while the caller scores this one."""
        shard_bytes = ShardCache(lake, max_shards=_SHARDS_HELD)
        images = images or {}
        size, n, bs = self.size, len(hashes), self.config.batch_size

        def item(data: bytes | np.ndarray) -> np.ndarray:
            return data if isinstance(data, np.ndarray) else fit_square(load_rgb(data), size)

        def sources(start: int) -> list[bytes | np.ndarray]:
            return [images[h] if h in images else shard_bytes.get(s, h)
                    for s, h in zip(shards[start:start + bs], hashes[start:start + bs])]

        if self.config.workers == 0:
            for start in range(0, n, bs):
                src = sources(start)
                yield start, np.stack([item(d) for d in src]), sum(isinstance(d, np.ndarray) for d in src)
            return
        with ThreadPoolExecutor(self.config.workers) as pool:
            def submit(start):
                src = sources(start)
                return [pool.submit(item, d) for d in src], sum(isinstance(d, np.ndarray) for d in src)

            ahead = submit(0) if n else None
            for start in range(0, n, bs):
                futures, from_memory = ahead
                ahead = submit(start + bs) if start + bs < n else None
                yield start, np.stack([f.result() for f in futures]), from_memory

    def _normalise(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, C] -> float32 [N, C, H, W], (x - mean) * scale, into one buffer
        reused batch to batch (a fresh one per batch costs more in page faults)."""
        shape = (batch.shape[0], batch.shape[3], batch.shape[1], batch.shape[2])
        if self._buffer is None or self._buffer.shape[1:] != shape[1:] or len(self._buffer) < shape[0]:
            self._buffer = np.empty(shape, np.float32)
        out = self._buffer[:shape[0]]
        out[...] = batch.transpose(0, 3, 1, 2)
        out -= self._mean
        out *= self._scale
        return out


def score_images(model: nn.Module, card: ModelCard, lake: str, shards: Sequence[str],
                 hashes: Sequence[str], config: TagConfig, *, desc: str,
                 texts: Sequence[str | None] | None = None,
                 more: Sequence[MoreImages] | None = None) -> Scores:
    """Scores of one set of products (ImageScorer for a single call)."""
    return ImageScorer(model, card, config).score(lake, shards, hashes, desc=desc, texts=texts, more=more)
