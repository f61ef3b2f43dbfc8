"""One epoch of training, and what it updates.

Masked BCE with logits (or focal / ASL, tagger.train.losses) and per-output pos_weight,
AdamW with a linear warm-up and cosine decay stepped every batch, an EMA of the weights,
AMP and channels_last on CUDA. Under DDP each rank's loss is weighted by its share of the
global batch's known labels, so N processes learn what one process with the global batch
learns (tests/train/test_ddp.py).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tagger.config import TrainConfig
from tagger.data.transforms import BatchNormalize, model_input
from tagger.model.device import autocast, unwrap
from tagger.train.losses import masked_multilabel_loss

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3

log = logging.getLogger(__name__)


@dataclass
class Fit:
    """What one epoch of training updates, and where it runs."""

    model: nn.Module  # what trains: the model itself, or its DDP / torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    pos_weight: torch.Tensor  # per output, on the device
    normalize: BatchNormalize  # uint8 batches -> model input, on the device
    device: torch.device


def create_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, config: TrainConfig) -> LambdaLR:
    """Linear warm-up, then cosine decay to 1% of the peak, stepped every batch."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, int(config.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)


def create_ema(model: nn.Module, config: TrainConfig) -> ModelEmaV3 | None:
    """timm's ModelEmaV3 of the weights, its decay ramped up from 0 (1 - (1 + step)^-2/3,
    capped at ema_decay), so short runs average over their last ~100 steps and long ones
    over ~1/(1 - ema_decay); None without ema_decay."""
    if config.ema_decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=config.ema_decay, use_warmup=True)


def create_fit(model: nn.Module, config: TrainConfig, steps_per_epoch: int, pos_weight: torch.Tensor,
               normalize: BatchNormalize, device: torch.device) -> Fit:
    """AdamW, its schedule, the AMP grad scaler (fp16 only: bf16 needs none) and the EMA for
    `model`, before any DDP or compile wrapping (a checkpoint loads into the plain model)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = create_scheduler(optimizer, steps_per_epoch, config)
    use_scaler = device.type == "cuda" and config.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    return Fit(model, optimizer, scheduler, scaler, create_ema(model, config), pos_weight, normalize,
               device)


def train_one_epoch(fit: Fit, loader: DataLoader, epoch: int, config: TrainConfig) -> float:
    """One pass over the training loader; returns the mean loss. Logs img/s and ETA.
    uint8 batches are normalised on the device by `fit.normalize`."""
    model, scheduler, device = fit.model, fit.scheduler, fit.device
    model.train()
    total_loss, seen, t0 = 0.0, 0, time.perf_counter()
    steps = len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=None, leave=False)
    for step, (x, y, m) in enumerate(bar):
        x = model_input(x, fit.normalize, device, channels_last=config.channels_last)
        y, m = y.to(device, non_blocking=True), m.to(device, non_blocking=True)
        with autocast(device, config.amp):
            logits = model(x)
        loss = masked_multilabel_loss(logits.float(), y, m, fit.pos_weight, kind=config.loss)
        fit.optimizer.zero_grad(set_to_none=True)
        fit.scaler.scale(loss * _share_of_known_labels(m)).backward()
        fit.scaler.step(fit.optimizer)
        fit.scaler.update()
        scheduler.step()
        if fit.ema is not None:
            fit.ema.update(unwrap(model), step=scheduler.last_epoch)
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
