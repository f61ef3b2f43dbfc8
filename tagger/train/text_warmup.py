"""The text branch fitted on its own before the fused model trains.

In the few epochs a photo model can afford, the fused model's text features stay
under-trained on the long tail of rare values, where a text classifier fitted to
convergence wins (benchmarks/README.md). Titles are cheap: an epoch over the training
split's texts alone decodes no image and takes seconds. So the text branch and a linear
head of its own are fitted first (`text_warmup_epochs`, the same loss, its own warm-up +
cosine schedule), then handed to the fused model: its embeddings, the head's text columns
and bias; the head's image columns start at zero. The fused model thus starts as the
text model, and what the photo learns is what the title does not say. The optimizer and
EMA of the fused run are made afterwards (tagger.train.run), so they start from it too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from tagger.config import TrainConfig
from tagger.data.text import encode_texts
from tagger.model.text import ImageTextModel
from tagger.train.loop import Fit

log = logging.getLogger(__name__)


def warm_up_text(model: ImageTextModel, texts: Sequence[str | None], targets: np.ndarray,
                 mask: np.ndarray, fit: Fit, config: TrainConfig, world_size: int = 1) -> list[float]:
    """Fit `model`'s text branch on the training split's `texts` for
    config.text_warmup_epochs epochs and start its head from it; the mean loss per epoch.
    `fit`: the loss's arrays (pos_weight, softmax heads, class and attribute weights).
    Under DDP every rank fits the whole split in batches of the global batch (batch_size x
    `world_size`): the ranks then hold what one process with that batch holds."""
    epochs, device, batch = config.text_warmup_epochs, fit.device, config.batch_size * world_size
    n, k = len(texts), targets.shape[1]
    head = nn.Linear(model.text_config.dim, k).to(device)
    optimizer = torch.optim.AdamW(
        [{"params": head.parameters()},
         {"params": model.text.parameters(), "lr": config.lr * config.text_lr_scale, "weight_decay": 0.0}],
        lr=config.lr, weight_decay=config.weight_decay)
    # warm-up over a tenth of the steps, then cosine to 1%: the schedule the default was
    # measured with (create_scheduler's shape, but its warm-up is TrainConfig.warmup_epochs)
    steps = epochs * math.ceil(n / batch)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup
        else 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    generator = torch.Generator().manual_seed(config.seed)
    losses, t0 = [], time.perf_counter()
    model.text.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator).numpy()
        total = 0.0
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            tokens = torch.from_numpy(encode_texts([texts[i] for i in rows], model.text_config)).to(device)
            logits = head(model.text(tokens))
            loss = fit.loss(logits, torch.from_numpy(targets[rows]).to(device),
                            torch.from_numpy(mask[rows]).to(device), config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
        losses.append(round(total / max(n, 1), 5))
        log.info("text warm-up epoch %d/%d: loss %.4f (%.0fs)", epoch + 1, epochs, losses[-1],
                 time.perf_counter() - t0)
    _start_head_from(model, head)
    return losses


def _start_head_from(model: ImageTextModel, head: nn.Linear) -> None:
    """The fused head's text columns and bias from the warmed-up head; its image columns 0."""
    dim = model.text_config.dim
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[:, -dim:] = head.weight
        model.head.bias.copy_(head.bias)
