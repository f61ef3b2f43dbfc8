"""Batched inference on PyTorch: scores in [0, 1] for every product and model output."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tagger.data.transforms import BatchNormalize, model_inputs
from tagger.model.device import autocast, resolve_precision

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_scores(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    channels_last: bool = True,
    amp: bool = True,
    precision: str | None = None,
    desc: str = "predict",
    logits: bool = False,
    normalize: BatchNormalize | None = None,
) -> np.ndarray:
    """float32 [N, K] sigmoid scores (raw logits with `logits`), rows in dataset order (the
    loader must not shuffle).

    `precision` ('auto', 'fp32', 'bf16', 'fp16') overrides `amp`; see model.resolve_precision.
    uint8 batches (tagger.data.transforms.create_transforms) need `normalize`; float ones are used as they are."""
    if precision is not None:
        precision = resolve_precision(device, precision)
    model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    n = len(loader.dataset)
    out: np.ndarray | None = None
    t0, done = time.perf_counter(), 0
    for batch in tqdm(loader, desc=desc, unit="batch", disable=None, leave=False):
        x = model_inputs(batch[0], normalize, device, channels_last=channels_last)
        with autocast(device, amp, precision):
            raw = model(*x).float()
        scores = (raw if logits else torch.sigmoid(raw)).cpu().numpy()
        if out is None:
            out = np.empty((n, scores.shape[1]), dtype=np.float32)
        out[done:done + len(scores)] = scores
        done += len(scores)
    seconds = time.perf_counter() - t0
    log.info("%s: %d images in %.1fs (%.0f img/s, %s)", desc, done, seconds,
             done / max(seconds, 1e-9), precision or ("amp" if amp and device.type == "cuda" else "fp32"))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
