"""One epoch of training, and what it updates.

Masked BCE with logits (or focal / ASL, tagger.train.losses) and per-output pos_weight;
with head softmax, one cross-entropy per `single` attribute (masked_multitask_loss);
optional MixUp / CutMix (tagger.train.mix); AdamW with a linear warm-up and cosine decay
stepped every batch, an EMA of the weights,
AMP and channels_last on CUDA. Under DDP each term of the loss is divided by its global
count (known labels, or the softmax heads' class weights), so N processes learn what one
process with the global batch learns, for sigmoid and softmax heads alike
(tests/train/test_ddp.py).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tagger.config import TrainConfig
from tagger.data.transforms import BatchNormalize, model_inputs
from tagger.model.device import autocast, unwrap
from tagger.labels import single_slices
from tagger.train.losses import compute_class_weights, masked_multitask_loss
from tagger.train.mix import mix_batch, mix_generator, mixed_loss

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3

    from catalog_schemas.taxonomy import Taxonomy

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
    heads: tuple[slice, ...] = ()  # the attributes trained as one softmax (head softmax)
    class_weight: torch.Tensor | None = None  # per output, on the device; softmax heads only
    attribute_weights: torch.Tensor | None = None  # per output: its attribute's weight

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
             config: TrainConfig, denominators=None) -> torch.Tensor:
        """masked_multitask_loss with this run's arrays and the config's loss settings."""
        return masked_multitask_loss(logits, targets, mask, self.heads, self.pos_weight,
                                     self.class_weight, label_smoothing=config.label_smoothing,
                                     attribute_weights=self.attribute_weights, kind=config.loss,
                                     denominators=denominators)


@dataclass(frozen=True)
class TrainLabels:
    """The training split's labels: what the loss's per-run arrays are computed from."""

    taxonomy: Taxonomy
    targets: np.ndarray  # [N, K]
    mask: np.ndarray  # [N, K]


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
               normalize: BatchNormalize, device: torch.device, labels: TrainLabels | None = None) -> Fit:
    """AdamW, its schedule, the AMP grad scaler (fp16 only: bf16 needs none) and the EMA for
    `model`, before any DDP or compile wrapping (a checkpoint loads into the plain model).
    With the training split's `labels`: the softmax heads, class weights and attribute
    weights of the loss (required for head softmax; without them every output is BCE with
    attribute weight 1)."""
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = create_scheduler(optimizer, steps_per_epoch, config)
    use_scaler = device.type == "cuda" and config.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    fit = Fit(model, optimizer, scheduler, scaler, create_ema(model, config), pos_weight, normalize,
              device)
    if labels is None:
        if config.head == "softmax":
            raise ValueError("head softmax needs the training split's labels: "
                             "create_fit(..., labels=TrainLabels(taxonomy, targets, mask))")
        return fit
    return _with_loss_arrays(fit, config, labels)


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """One group at the configured lr; a text branch's embeddings in a second group at
    text_lr_scale times it (each feature's row is updated only in the batches that hold it)
    and without weight decay (AdamW's decay shrinks every row at every step, also the rows
    of the rare features no batch holds). After a text warm-up, a fused model's branch takes
    fused_text_lr_scale where one is set."""
    text = getattr(unwrap(model), "text", None)
    if not isinstance(text, nn.Module):
        return [{"params": list(model.parameters())}]
    ids = {id(p) for p in text.parameters()}
    rest = [p for p in model.parameters() if id(p) not in ids]
    scale = config.text_lr_scale
    if (getattr(unwrap(model), "image", None) is not None and config.text_warmup_epochs
            and config.fused_text_lr_scale is not None):
        scale = config.fused_text_lr_scale
    return [{"params": rest}, {"params": list(text.parameters()), "lr": config.lr * scale,
                               "weight_decay": 0.0}]


def _with_loss_arrays(fit: Fit, config: TrainConfig, labels: TrainLabels) -> Fit:
    """`fit` with the per-run arrays of masked_multitask_loss, on its device."""
    tax = labels.taxonomy
    heads = tuple(single_slices(tax).values()) if config.head == "softmax" else ()
    class_weight = compute_class_weights(labels.targets, labels.mask, heads, config.class_weight,
                                         config.pos_weight_max)
    omega = np.ones(tax.num_outputs, dtype=np.float32)
    for attr in tax.attributes:
        omega[tax.slices[attr.name]] = attr.weight
    return replace(fit, heads=heads, class_weight=torch.from_numpy(class_weight).to(fit.device),
                   attribute_weights=torch.from_numpy(omega).to(fit.device))


def train_one_epoch(fit: Fit, loader: DataLoader, epoch: int, config: TrainConfig) -> float:
    """One pass over the training loader; returns the mean loss. Logs img/s and ETA.
    uint8 batches are normalised on the device by `fit.normalize`."""
    model, scheduler, device = fit.model, fit.scheduler, fit.device
    model.train()
    total_loss, seen, t0 = 0.0, 0, time.perf_counter()
    steps = len(loader)
    mixing = mix_generator(config, epoch)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=None, leave=False)
    for step, (x, y, m) in enumerate(bar):
        x, *text = model_inputs(x, fit.normalize, device, channels_last=config.channels_last)
        y, m = y.to(device, non_blocking=True), m.to(device, non_blocking=True)
        x, mix = mix_batch(x, config, mixing)
        with autocast(device, config.amp):
            logits = model(x, *text).float()

        def loss_fn(targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return fit.loss(logits, targets, mask, config, _global_denominators())

        loss = mixed_loss(loss_fn, y, m, mix)
        fit.optimizer.zero_grad(set_to_none=True)
        fit.scaler.scale(loss).backward()
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


def _global_denominators():
    """Under DDP, the loss's per-term counts (known labels; class weights of the softmax
    heads' known rows) as their mean over the ranks: each rank then divides its own sums by
    the global count / world size, and DDP's average of the ranks' gradients is exactly the
    gradient of the global batch's per-term means, as one process would compute them (ranks'
    batches differ in how many labels of each attribute are known). None outside DDP."""
    if not (dist.is_available() and dist.is_initialized()):
        return None

    def mean_over_ranks(counts: torch.Tensor) -> torch.Tensor:
        total = counts.clone()
        dist.all_reduce(total)
        return total / dist.get_world_size()

    return mean_over_ranks
