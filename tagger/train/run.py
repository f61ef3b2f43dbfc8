"""Train one model version: split, fit, tune thresholds, evaluate, register.

Masked BCE with logits and per-output pos_weight, AdamW with warm-up + cosine decay,
AMP and channels_last on CUDA, DDP when started under torchrun (gloo on CPU, NCCL on
GPUs), a checkpoint after every epoch and `resume` from it. After every epoch rank 0 scores
the validation split (tagger.train.epochs); the epoch with the highest validation mAP is
registered, and with `patience` training stops once it has not improved for that long.

`train_model` is the whole run as a few named steps, each in the module named for it:
split (the labelled products and their train/validation split), loop (one epoch:
optimizer, schedule, EMA, the DDP loss weighting), epochs (per-epoch validation and the best
epoch), curves (TensorBoard event files), checkpoints (save and resume), register (validation, thresholds, the model card, the report, the registered version) and gate (production or candidate).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from catalog_schemas.card import DataConfig, TextConfig
from tagger.config import FROM_BACKBONE, TrainConfig
from tagger.data.dataset import ProductImages
from tagger.data.loader import create_loader, loader_workers
from tagger.data.shuffle import ShardBatchSampler
from tagger.data.transforms import BatchNormalize
from tagger.io.storage import Storage, open_storage
from tagger.backbones import get_backbone
from tagger.model.device import resolve_device
from tagger.model.factory import create_model, data_config
from tagger.train.curves import EventLog
from tagger.train.gate import gate_candidate
from tagger.train.epochs import EpochWatch, epochs_without_improvement
from tagger.train.checkpoints import checkpoint_key, delete_checkpoint, resume_training, save_checkpoint
from tagger.train.loop import Fit, TrainLabels, create_ema, create_fit, train_one_epoch
from tagger.train.losses import compute_pos_weight
from tagger.train.register import RunFacts, evaluate_and_register
from tagger.train.split import TrainingData, create_datasets, load_training_data, split_products
from tagger.train.text_warmup import warm_up_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Processes:
    """This process's place in a torchrun job (rank 0 of 1 outside torchrun) and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device


GPU_WORKERS = 4  # loader workers per GPU when `workers` is unset (TrainConfig.workers)


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill the backbone's defaults, and the device's loader workers, into unset fields: what
    ran is what the card says."""
    spec = get_backbone(config.backbone)
    update = {name: getattr(config, name) or getattr(spec, name) for name in sorted(FROM_BACKBONE)}
    if config.workers is None:
        update["workers"] = GPU_WORKERS if resolve_device(config.device).type == "cuda" else 0
    return config.model_copy(update=update)


def init_distributed(config: TrainConfig) -> Processes:
    """Rank, world size and device from torchrun's environment; joins the process group
    (NCCL on GPUs, one GPU per local rank; gloo on the CPU) when there are several."""
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(config.device)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, local_rank, world, device)


def _close_distributed(procs: Processes) -> None:
    if procs.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def resolve_inputs(config: TrainConfig, data: TrainingData) -> TrainConfig:
    """`config` with inputs auto decided by the data (image+text where products have text),
    and a clear error where text is asked for but no product has any."""
    inputs = config.inputs
    if inputs == "auto":
        inputs = "image+text" if data.has_text else "image"
    elif inputs != "image" and not data.has_text:
        raise ValueError(f"inputs {inputs!r} reads the products' text, but no product of the lake "
                         "has any: map text columns in the taxonomy's catalog section "
                         "(text: [title]) and ingest again, or use inputs 'image'.")
    return TrainConfig.model_validate({**config.model_dump(), "inputs": inputs})


def _create_model(config: TrainConfig, num_outputs: int, procs: Processes,
                  text: TextConfig | None = None) -> tuple[nn.Module, DataConfig]:
    """The network on its device, and the input normalisation derived from it."""
    model = create_model(config.backbone, num_outputs, pretrained=config.pretrained,
                         weights=config.weights, inputs=config.inputs, text=text,
                         text_dropout=config.text_dropout, image_dropout=config.image_dropout)
    dcfg = data_config(model, config.image_size)
    model.to(procs.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if procs.world_size > 1 and procs.device.type == "cuda":
        # BatchNorm statistics over the global batch, as one process would see them (small
        # per-GPU batches make per-GPU statistics noisy). SyncBatchNorm needs CUDA; under
        # gloo on the CPU each process keeps its own statistics.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, dcfg


def _create_train_loader(train_ds: ProductImages, config: TrainConfig,
                         procs: Processes) -> tuple[ShardBatchSampler | DistributedSampler, DataLoader]:
    """The training loader and its sampler (set_epoch before each epoch). Either sampler
    makes N processes with batch b draw exactly the global batches one process draws with
    batch N*b (tests/train/test_ddp.py compares the two)."""
    drop_last = len(train_ds) > config.batch_size
    if config.sampler == "shards":
        workers = loader_workers(len(train_ds), config.batch_size, config.workers)
        sampler = ShardBatchSampler(train_ds.shards, config.batch_size, seed=config.seed,
                                    world_size=procs.world_size, rank=procs.rank, workers=workers,
                                    window=config.shuffle_window, drop_last=drop_last)
        loader = create_loader(train_ds, config.batch_size, config.workers, batch_sampler=sampler,
                               device=procs.device, seed=config.seed, persistent=True)
        return sampler, loader
    sampler = DistributedSampler(train_ds, num_replicas=procs.world_size, rank=procs.rank,
                                 seed=config.seed, drop_last=True)
    loader = create_loader(train_ds, config.batch_size, config.workers, shuffle=True,
                           sampler=sampler, drop_last=drop_last,
                           device=procs.device, seed=config.seed, persistent=True)
    return sampler, loader


def _wrap(model: nn.Module, config: TrainConfig, procs: Processes) -> nn.Module:
    """What trains: DDP around the model with several processes, compiled with `compile`."""
    net = DistributedDataParallel(model) if procs.world_size > 1 else model
    return torch.compile(net) if config.compile else net


def _should_stop(history: list[dict], config: TrainConfig, procs: Processes) -> bool:
    """Whether validation mAP has not improved for `patience` epochs; rank 0 decides (it
    alone validates) and tells the others, which wait for it here."""
    stop = (procs.rank == 0 and config.patience is not None
            and epochs_without_improvement(history) >= config.patience)
    if procs.world_size > 1:
        flag = torch.tensor([int(stop)], device=procs.device)
        dist.broadcast(flag, 0)
        stop = bool(flag.item())
    if stop and procs.rank == 0:
        log.info("stopping after epoch %d: validation mAP has not improved for %d epochs",
                 history[-1]["epoch"], config.patience)
    return stop


def _register_best(storage: Storage, model: nn.Module, watch: EpochWatch, run: RunFacts) -> str:
    """Register the best epoch's weights (loaded into `model`) with its raw-vs-EMA choice;
    where no epoch was scored, the last epoch's raw weights."""
    best = watch.best
    if best is None:  # no epoch was scored (nothing to validate on): the last raw weights
        return evaluate_and_register(storage, model, replace(run, events=watch.events))
    model.load_state_dict(best.state)
    log.info("registering epoch %d of %d (%s weights)", best.epoch, len(run.history), best.weights)
    entry = next(h for h in run.history if h["epoch"] == best.epoch)
    choice = None if entry.get("val_mAP_ema") is None else dict(
        decay=run.config.ema_decay, val_mAP_raw=entry["val_mAP_raw"],
        val_mAP_ema=entry["val_mAP_ema"], registered=best.weights)
    run = replace(run, best_epoch=best.epoch, ema_choice=choice, events=watch.events)
    return evaluate_and_register(storage, model, run)


def train_model(lake: str, config: TrainConfig | None = None) -> str | None:
    """Train, tune thresholds, evaluate and register a model; returns its version
    (None on non-zero ranks of a distributed run)."""
    t_start = time.perf_counter()
    config = resolve_config(config or TrainConfig())
    storage = open_storage(lake)
    procs = init_distributed(config)
    torch.manual_seed(config.seed)

    data = load_training_data(storage)
    config = resolve_inputs(config, data)
    text = TextConfig(buckets=config.text_buckets, dim=config.text_dim) if config.inputs != "image" else None
    split = split_products(data.targets, config.val_fraction, config.test_fraction, config.seed)
    train_idx = split.train
    pos_weight = compute_pos_weight(data.targets[train_idx], data.mask[train_idx],
                                    mode=config.pos_weight, max_weight=config.pos_weight_max)
    log.info("training on %d products, validating on %d, testing on %d; %d outputs; inputs %s; "
             "device %s x%d", len(train_idx), len(split.validation), len(split.test),
             data.taxonomy.num_outputs, config.inputs, procs.device, procs.world_size)

    model, dcfg = _create_model(config, data.taxonomy.num_outputs, procs, text)
    train_ds, val_ds, test_ds = create_datasets(lake, data, split, config.image_size, text)
    sampler, train_loader = _create_train_loader(train_ds, config, procs)
    fit = create_fit(model, config, len(train_loader), torch.from_numpy(pos_weight).to(procs.device),
                     BatchNormalize.from_config(dcfg), procs.device,
                     labels=TrainLabels(data.taxonomy, data.targets[train_idx], data.mask[train_idx]))
    key = checkpoint_key(config, data.snapshot)
    start_epoch, history, best = resume_training(storage, key, fit) if config.resume else (0, [], None)
    if start_epoch == 0 and config.inputs == "image+text" and config.text_warmup_epochs:
        warm_up_text(model, [data.texts[i] for i in train_idx], data.targets[train_idx],
                     data.mask[train_idx], fit, config, procs.world_size)
        fit = replace(fit, ema=create_ema(model, config))  # the EMA starts from the warmed-up model
    fit = replace(fit, model=_wrap(model, config, procs))
    watch = None
    if procs.rank == 0:  # rank 0 alone validates; the others wait for it in _should_stop
        watch = EpochWatch(create_loader(val_ds, config.batch_size, config.workers, device=procs.device,
                                         persistent=True), data.taxonomy, EventLog(), best)
    version = None
    try:
        _train_epochs(storage, key, fit, sampler, train_loader, config, procs, watch, start_epoch, history)
        if watch is not None:
            run = RunFacts(config, data, split.validation, val_ds, len(train_idx), pos_weight, dcfg,
                           procs.device, procs.world_size, history, time.perf_counter() - t_start,
                           test_idx=split.test, test_ds=test_ds,
                           class_weight=fit.class_weight.cpu().numpy())
            version = _register_best(storage, model, watch, run)
            delete_checkpoint(storage, key)
            # production or candidate: compared with production on data neither trained on
            gate_candidate(lake, version, config, data.product_ids,
                           [data.product_ids[i] for i in split.test])
    finally:  # the local event files go, whether the run registered or failed
        if watch is not None:
            watch.events.close()
    _close_distributed(procs)
    return version


def _train_epochs(storage: Storage, key: str, fit: Fit,
                  sampler: ShardBatchSampler | DistributedSampler,
                  train_loader: DataLoader, config: TrainConfig, procs: Processes,
                  watch: EpochWatch | None, start_epoch: int, history: list[dict]) -> None:
    """Epochs start_epoch.. into `history`: train, then (rank 0) validate and checkpoint; stop
    early when patience runs out."""
    if watch is not None:
        for entry in history:  # the resumed epochs
            watch.events.add_epoch(entry)
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        loss = train_one_epoch(fit, train_loader, epoch, config)
        history.append({"epoch": epoch + 1, "train_loss": round(loss, 5),
                        "seconds": round(time.perf_counter() - t0, 1)})
        if watch is not None:
            watch.record(fit, config, history)
            save_checkpoint(storage, key, fit, epoch, history, watch.best)
        if _should_stop(history, config, procs):
            break
