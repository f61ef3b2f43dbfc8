"""Batched inference: scores in [0, 1] for every product and model output."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tagger.data import BatchNormalize
from tagger.model import autocast, resolve_precision

log = logging.getLogger(__name__)

MIN_BATCHES_FOR_WORKERS = 20


def _init_worker(_worker_id: int) -> None:
    """One OpenCV thread per loader worker: torch already runs workers single-threaded, but
    OpenCV (albumentations' resizes) would start a pool of all cores in every worker, and
    N workers x all cores oversubscribe a GPU box's CPUs."""
    import cv2

    cv2.setNumThreads(1)


def create_loader(dataset, batch_size: int, workers: int, *, shuffle=False, sampler=None,
                  drop_last=False, device: torch.device | None = None, seed: int = 0,
                  persistent: bool = False) -> DataLoader:
    """DataLoader with the settings that keep a GPU fed: prefetching workers, pinned memory
    on CUDA; `persistent` keeps the workers across epochs (training).

    Workers start from a forkserver, not a fork of this process: Prefect runs tasks in
    threads, and a process forked while other threads hold locks can die or hang.
    A worker takes seconds to start that way, more than it saves on a small job: below
    MIN_BATCHES_FOR_WORKERS batches the main process loads the data itself."""
    if len(dataset) < MIN_BATCHES_FOR_WORKERS * batch_size:
        workers = 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=persistent and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        multiprocessing_context="forkserver" if workers > 0 else None,
        worker_init_fn=_init_worker if workers > 0 else None,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )


def model_input(x: torch.Tensor, normalize: BatchNormalize | None, device: torch.device, *,
                channels_last: bool = False) -> torch.Tensor:
    """A loader batch as float model input on `device` (see BatchNormalize); float batches
    without `normalize` are taken as model input already."""
    if normalize is not None:
        return normalize(x, device, channels_last=channels_last)
    if not x.is_floating_point():
        raise TypeError(f"a {x.dtype} image batch needs normalize= (tagger.data.BatchNormalize)")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device, non_blocking=True).contiguous(memory_format=fmt)


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
    uint8 batches (tagger.data.create_transforms) need `normalize`; float ones are used as they are."""
    if precision is not None:
        precision = resolve_precision(device, precision)
    model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    n = len(loader.dataset)
    out: np.ndarray | None = None
    t0, done = time.perf_counter(), 0
    for batch in tqdm(loader, desc=desc, unit="batch", disable=None, leave=False):
        x = model_input(batch[0], normalize, device, channels_last=channels_last)
        with autocast(device, amp, precision):
            raw = model(x).float()
        scores = (raw if logits else torch.sigmoid(raw)).cpu().numpy()
        if out is None:
            out = np.empty((n, scores.shape[1]), dtype=np.float32)
        out[done:done + len(scores)] = scores
        done += len(scores)
    seconds = time.perf_counter() - t0
    log.info("%s: %d images in %.1fs (%.0f img/s, %s)", desc, done, seconds,
             done / max(seconds, 1e-9), precision or ("amp" if amp and device.type == "cuda" else "fp32"))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
