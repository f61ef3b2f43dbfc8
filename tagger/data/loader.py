"""DataLoaders that keep a GPU fed without oversubscribing the CPU."""

from __future__ import annotations

import multiprocessing

import torch
from torch.utils.data import DataLoader


MIN_BATCHES_FOR_WORKERS = 20

def _init_worker(_worker_id: int) -> None:
    """One OpenCV thread per loader worker: torch already runs workers single-threaded, but
    OpenCV (albumentations' resizes) would start a pool of all cores in every worker, and
    N workers x all cores oversubscribe a GPU box's CPUs."""
    import cv2

    cv2.setNumThreads(1)

def _preload_forkserver() -> None:
    """Have the forkserver import torch and the dataset once, when it starts: each worker is
    then a fork of it (0.1 s) instead of a process that imports them itself (about 3 s here),
    which every loader paid again (a tag run's chunks, a validation pass per epoch). No effect
    once the server runs."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["__main__", "torch", "tagger.data.dataset"])


def loader_workers(items: int, batch_size: int, workers: int) -> int:
    """The worker processes create_loader starts for `items` items (see there)."""
    return 0 if items < MIN_BATCHES_FOR_WORKERS * batch_size else workers


def create_loader(dataset, batch_size: int, workers: int, *, shuffle=False, sampler=None,
                  drop_last=False, device: torch.device | None = None, seed: int = 0,
                  persistent: bool = False, batch_sampler=None) -> DataLoader:
    """DataLoader with the settings that keep a GPU fed: prefetching workers, pinned memory
    on CUDA; `persistent` keeps the workers across epochs (training).

    Workers start from a forkserver, not a fork of this process: Prefect runs tasks in
    threads, and a process forked while other threads hold locks can die or hang.
    A worker takes seconds to start that way, more than it saves on a small job: below
    MIN_BATCHES_FOR_WORKERS batches the main process loads the data itself (loader_workers).
    A `batch_sampler` (tagger.data.shuffle) replaces batch_size, shuffle, sampler and
    drop_last; it must be made for loader_workers(...) workers."""
    workers = loader_workers(len(dataset), batch_size, workers)
    if workers:
        _preload_forkserver()
    batching = (dict(batch_sampler=batch_sampler) if batch_sampler is not None else
                dict(batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                     sampler=sampler, drop_last=drop_last))
    return DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=persistent and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        multiprocessing_context="forkserver" if workers > 0 else None,
        worker_init_fn=_init_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
