"""Train one model version: split, fit, tune thresholds, evaluate, register.

Masked BCE with logits and per-output pos_weight, AdamW with warm-up + cosine decay,
AMP and channels_last on CUDA, DDP when started under torchrun (gloo on CPU, NCCL on
GPUs), a checkpoint after every epoch and `resume` from it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import timm
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from catalog_schemas.taxonomy import Taxonomy
from tagger.model.backbones import get_backbone
from tagger.config import TrainConfig
from tagger.data.dataset import ProductImages
from tagger.data.transforms import BatchNormalize, create_transforms
from tagger.lake import read_lake_taxonomy, read_products
from tagger.train.losses import compute_pos_weight, masked_multilabel_loss
from tagger.quality.evaluate import calibration_metrics, compute_evaluation, write_evaluation_report
from tagger.model.device import autocast, resolve_device, unwrap
from tagger.model.factory import create_model, data_config
from tagger.data.loader import create_loader
from tagger.data.transforms import model_input
from tagger.model.predict import predict_scores
from tagger.model.versions import new_version, register_model
from catalog_schemas.card import ModelCard
from tagger.labels import values_from_vector
from tagger.quality.report import card_summary
from tagger.io.storage import Storage, open_storage
from tagger.quality.calibration import apply_temperature, fit_temperatures, temperature_vector
from tagger.labels import encode_labels
from tagger.quality.thresholds import precision_thresholds, tune_thresholds
from tagger.lake import CHECKPOINTS, model_path

log = logging.getLogger(__name__)



@dataclass
class TrainingData:
    taxonomy: Taxonomy
    product_ids: list[str]
    shards: list[str]
    hashes: list[str]
    targets: np.ndarray
    mask: np.ndarray
    snapshot: str  # hash of what was trained on: ids, images and labels


def load_training_data(storage: Storage) -> TrainingData:
    """Labelled products of the lake (sorted by id, so splits are reproducible)."""
    taxonomy = read_lake_taxonomy(storage)
    products = read_products(storage).sort_by("product_id").to_pylist()
    labels = [dict(p["labels"]) for p in products]
    targets, mask = encode_labels(taxonomy, labels, [p["category"] for p in products])
    keep = mask.any(axis=1)
    products = [p for p, k in zip(products, keep) if k]
    digest = hashlib.sha256()
    for p in products:
        digest.update(f"{p['product_id']}|{p['image_hash']}|{sorted(p['labels'])}\n".encode())
    return TrainingData(
        taxonomy, [p["product_id"] for p in products], [p["image_shard"] for p in products],
        [p["image_hash"] for p in products], targets[keep], mask[keep], digest.hexdigest()[:16],
    )


def split_train_val(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label stratified split (iterative stratification), so rare values land in both."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if len(targets) < 4:
        raise ValueError(f"Need at least 4 labelled products to train, found {len(targets)}.")
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(targets)), targets.astype(int)))
    return np.sort(train_idx), np.sort(val_idx)


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill the backbone's defaults into unset fields: what ran is what the card says."""
    spec = get_backbone(config.backbone)
    return config.model_copy(update=dict(
        image_size=config.image_size or spec.image_size,
        batch_size=config.batch_size or spec.batch_size,
        lr=config.lr or spec.lr,
    ))


def create_scheduler(optimizer, steps_per_epoch: int, config: TrainConfig):
    """Linear warm-up, then cosine decay to 1% of the peak, stepped every batch."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, int(config.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def create_ema(model: nn.Module, config: TrainConfig):
    """timm's ModelEmaV3 of the weights, its decay ramped up from 0 (1 - (1 + step)^-2/3,
    capped at ema_decay), so short runs average over their last ~100 steps and long ones
    over ~1/(1 - ema_decay); None without ema_decay."""
    if config.ema_decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=config.ema_decay, use_warmup=True)


def train_one_epoch(model, loader, optimizer, scheduler, scaler, pos_weight, device, epoch, config,
                    ema=None, normalize: BatchNormalize | None = None) -> float:
    """One pass over the training loader; returns the mean loss. Logs img/s and ETA.
    uint8 batches are normalised on the device by `normalize`."""
    model.train()
    total_loss, seen, t0 = 0.0, 0, time.perf_counter()
    steps = len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=None, leave=False)
    for step, (x, y, m) in enumerate(bar):
        x = model_input(x, normalize, device, channels_last=config.channels_last)
        y, m = y.to(device, non_blocking=True), m.to(device, non_blocking=True)
        with autocast(device, config.amp):
            logits = model(x)
        loss = masked_multilabel_loss(logits.float(), y, m, pos_weight, kind=config.loss)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss * _share_of_known_labels(m)).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update(unwrap(model), step=scheduler.last_epoch)
        total_loss += loss.item() * len(x)
        seen += len(x)
        if (step + 1) % config.log_every == 0 or step + 1 == steps:
            rate = seen / (time.perf_counter() - t0)
            eta = (steps - step - 1) * len(x) / max(rate, 1e-9)
            log.info("epoch %d step %d/%d loss %.4f lr %.2e %.0f img/s eta %.0fs", epoch + 1,
                     step + 1, steps, total_loss / seen, scheduler.get_last_lr()[0], rate, eta)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    return total_loss / max(seen, 1)


def _share_of_known_labels(mask: torch.Tensor) -> torch.Tensor | float:
    """Under DDP, weight this rank's masked mean by its share of the global batch's known
    labels: DDP averages gradients over ranks, so the result is the gradient of the global
    batch's masked mean, as one process would compute it (ranks' batches differ in how
    many labels are known). 1 outside DDP."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1.0
    known = mask.sum().float()
    total = known.clone()
    dist.all_reduce(total)
    return known * dist.get_world_size() / total.clamp(min=1)


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def _checkpoint_key(config: TrainConfig, snapshot: str) -> str:
    # Fields that do not change what is learned may differ between a run and its resume.
    stable = config.model_dump(exclude={"resume", "workers", "log_every", "epochs", "device"})
    return hashlib.sha256(json.dumps([stable, snapshot], sort_keys=True).encode()).hexdigest()[:16]


def _save_checkpoint(storage, key, model, optimizer, scheduler, scaler, epoch, history, ema=None):
    state = dict(model=unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                 ema=ema.state_dict() if ema is not None else {},
                 scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), epoch=epoch,
                 history=json.dumps(history))
    with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        local = Path(tmp) / "last.ckpt"
        torch.save(state, local)
        storage.upload(local, f"{CHECKPOINTS}/{key}/last.ckpt")


def _load_checkpoint(storage, key) -> dict | None:
    path = f"{CHECKPOINTS}/{key}/last.ckpt"
    if not storage.exists(path):
        return None
    # weights_only: a checkpoint is data, never code.
    return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)


def train_model(lake: str, config: TrainConfig | None = None) -> str | None:
    """Train, tune thresholds, evaluate and register a model; returns its version
    (None on non-zero ranks of a distributed run)."""
    t_start = time.perf_counter()
    config = resolve_config(config or TrainConfig())
    storage = open_storage(lake)
    rank, local_rank, world = _distributed()
    device = resolve_device(config.device)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(config.seed)

    data = load_training_data(storage)
    taxonomy = data.taxonomy
    train_idx, val_idx = split_train_val(data.targets, config.val_fraction, config.seed)
    pos_weight_np = compute_pos_weight(
        data.targets[train_idx], data.mask[train_idx], mode=config.pos_weight,
        max_weight=config.pos_weight_max,
    )
    pos_weight = torch.from_numpy(pos_weight_np).to(device)
    log.info("training on %d products, validating on %d; %d outputs; device %s x%d",
             len(train_idx), len(val_idx), taxonomy.num_outputs, device, world)

    model = create_model(config.backbone, taxonomy.num_outputs, pretrained=config.pretrained,
                         weights=config.weights)
    dcfg = data_config(model, config.image_size)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if world > 1 and device.type == "cuda":
        # BatchNorm statistics over the global batch, as one process would see them (small
        # per-GPU batches make per-GPU statistics noisy). SyncBatchNorm needs CUDA; under
        # gloo on the CPU each process keeps its own statistics.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def subset(idx, train):
        tf = create_transforms(config.image_size, train=train)
        return ProductImages(lake, [data.shards[i] for i in idx], [data.hashes[i] for i in idx], tf,
                             data.targets[idx], data.mask[idx])

    train_ds, val_ds = subset(train_idx, True), subset(val_idx, False)
    # One sampler for one process or many: N processes with batch b draw exactly the global
    # batches that one process draws with batch N*b (tests/test_ddp.py compares the two).
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, seed=config.seed,
                                 drop_last=True)
    train_loader = create_loader(train_ds, config.batch_size, config.workers, shuffle=True,
                                 sampler=sampler, drop_last=len(train_ds) > config.batch_size,
                                 device=device, seed=config.seed, persistent=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = create_scheduler(optimizer, len(train_loader), config)
    use_scaler = device.type == "cuda" and config.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    ema = create_ema(model, config)
    key, start_epoch, history = _checkpoint_key(config, data.snapshot), 0, []
    if config.resume:
        ckpt = _load_checkpoint(storage, key)
        if ckpt is None:
            log.warning("resume: no checkpoint for this config and data (%s); starting fresh", key)
        else:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            if ema is not None and ckpt.get("ema"):
                ema.load_state_dict(ckpt["ema"])
            start_epoch, history = ckpt["epoch"] + 1, json.loads(ckpt["history"])
            log.info("resumed from epoch %d of checkpoint %s", start_epoch, key)

    train_net = DistributedDataParallel(model) if world > 1 else model
    if config.compile:
        train_net = torch.compile(train_net)
    normalize = BatchNormalize.from_config(dcfg)  # uint8 batches -> model input, on the device
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        loss = train_one_epoch(train_net, train_loader, optimizer, scheduler, scaler, pos_weight,
                               device, epoch, config, ema, normalize)
        history.append({"epoch": epoch + 1, "train_loss": round(loss, 5),
                        "seconds": round(time.perf_counter() - t0, 1)})
        if rank == 0:
            _save_checkpoint(storage, key, model, optimizer, scheduler, scaler, epoch, history, ema)

    version = None
    if rank == 0:
        version = _evaluate_and_register(storage, model, ema, val_ds, data, val_idx, pos_weight_np, dcfg,
                                         config, device, history, len(train_idx), world,
                                         time.perf_counter() - t_start)
        storage.delete_prefix(f"{CHECKPOINTS}/{key}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return version


def _validation_logits(model, ema, loader, device, config, normalize) -> tuple[nn.Module, np.ndarray, dict]:
    """Validation logits of the raw weights, or of their EMA when its mAP is higher."""
    from sklearn.metrics import average_precision_score

    def run(net, desc):
        return predict_scores(net, loader, device, channels_last=config.channels_last,
                              amp=config.amp, desc=desc, logits=True, normalize=normalize)

    logits = run(model, "validate")
    if ema is None:
        return model, logits, {}
    ema_logits = run(ema.module, "validate EMA")
    targets, mask = loader.dataset.targets, loader.dataset.mask

    def mean_ap(z):
        aps = [average_precision_score(targets[mask[:, k], k], z[mask[:, k], k])
               for k in range(z.shape[1]) if 0 < targets[mask[:, k], k].sum() < mask[:, k].sum()]
        return float(np.mean(aps)) if aps else 0.0

    raw_ap, ema_ap = mean_ap(logits), mean_ap(ema_logits)
    chosen = "ema" if ema_ap > raw_ap else "raw"
    log.info("validation mAP: raw weights %.4f, EMA %.4f; registering %s", raw_ap, ema_ap, chosen)
    info = dict(decay=config.ema_decay, val_mAP_raw=round(raw_ap, 5), val_mAP_ema=round(ema_ap, 5),
                registered=chosen)
    return (ema.module, ema_logits, info) if chosen == "ema" else (model, logits, info)


def choose_thresholds(config: TrainConfig, scores, targets, mask) -> tuple[np.ndarray, np.ndarray | None]:
    """(decision thresholds, auto-publish thresholds or None) per output.

    With min_precision, a value's tags are emitted from min(decision, auto-publish)
    threshold: where the precision target is met below the max-F1 cut, there is no review
    band; otherwise tags between the two are marked needs_review."""
    if config.thresholds == "fixed":
        thresholds = np.full(scores.shape[1], config.fixed_threshold, dtype=np.float32)
    else:
        thresholds = tune_thresholds(scores, targets, mask)
    if config.min_precision is None:
        return thresholds, None
    auto = precision_thresholds(scores, targets, mask, config.min_precision)
    return np.minimum(thresholds, auto), auto


def _evaluate_and_register(storage, model, ema, val_ds, data, val_idx, pos_weight, dcfg, config, device,
                           history, n_train, world, seconds) -> str:
    taxonomy = data.taxonomy
    loader = create_loader(val_ds, config.batch_size, config.workers, device=device)
    model, logits, ema_info = _validation_logits(model, ema, loader, device, config,
                                                 BatchNormalize.from_config(dcfg, reuse=True))
    targets, mask = data.targets[val_idx], data.mask[val_idx]
    temperatures = fit_temperatures(logits, targets, mask, taxonomy.slices) if config.calibrate else {}
    scores = apply_temperature(logits, temperature_vector(temperatures, taxonomy.slices,
                                                          taxonomy.num_outputs))
    thresholds, auto = choose_thresholds(config, scores, targets, mask)
    decisions, metrics = compute_evaluation(taxonomy, targets, mask, scores, thresholds, auto,
                                            config.min_precision)
    metrics["calibration"] = calibration_metrics(logits, scores, targets, mask, temperatures)
    metrics["split"] = "validation (thresholds were tuned on it: F1 figures are optimistic, AP is not)"
    version = new_version()
    card = ModelCard(
        version=version,
        created_at=datetime.now(timezone.utc).isoformat(),
        backbone=config.backbone,
        timm_name=get_backbone(config.backbone).timm_name,
        image_size=config.image_size,
        data_config=dcfg,
        taxonomy=taxonomy,
        thresholds=values_from_vector(taxonomy, thresholds),
        auto_thresholds=None if auto is None else values_from_vector(taxonomy, auto),
        min_precision=config.min_precision,
        temperature=temperatures,
        ema=ema_info or None,
        pos_weight=values_from_vector(taxonomy, pos_weight),
        metrics=metrics,
        config=config.model_dump(mode="json"),
        data=dict(snapshot=data.snapshot, products=len(data.product_ids), train=n_train,
                  validation=len(val_idx), lake=storage.uri),
        history=history,
        training=dict(device=str(device), world_size=world, seconds=round(seconds, 1),
                      torch=torch.__version__, timm=timm.__version__),
    )
    write_evaluation_report(storage, model_path(version), f"Model {version}", card_summary(card),
                            taxonomy, card.thresholds, targets, mask, scores, decisions, metrics,
                            auto_thresholds=card.auto_thresholds)
    register_model(storage, model, card)
    log.info("model %s: micro-F1 %.3f macro-F1 %.3f mAP %.3f on %d validation products",
             version, metrics["micro_f1"] or 0, metrics["macro_f1"] or 0, metrics["mAP"] or 0,
             len(val_idx))
    return version
