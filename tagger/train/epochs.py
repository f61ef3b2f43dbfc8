"""After every epoch: score the validation split, record it, keep the best weights.

Rank 0 scores the validation split with the raw weights and, with an EMA, with its weights
too (no augmentation, the loader's own generator: the global RNG, and so the training
trajectory, is untouched). Per epoch it records the training loss function on validation
(masked, over the whole split), the mAP, and the mean over `single` attributes of their top-1
accuracy with each such attribute's accuracy. The better of raw and EMA (by mAP; raw on a
tie) is that epoch's candidate; the epoch with the highest validation mAP (the earlier on a
tie) is the one registered, and a CPU copy of its weights is kept (and checkpointed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tagger.config import TrainConfig
from tagger.labels import single_slices
from tagger.model.device import unwrap
from tagger.model.predict import predict_scores
from tagger.quality.calibration import apply_temperature
from tagger.train.curves import EventLog
from tagger.train.loop import Fit

if TYPE_CHECKING:
    from catalog_schemas.taxonomy import Taxonomy

log = logging.getLogger(__name__)


@dataclass
class BestWeights:
    """The weights of the best epoch so far, on the CPU, and which they were."""

    epoch: int  # 1-based, as in the history
    weights: str  # "raw" or "ema"
    state: dict[str, torch.Tensor]


def choose_best_epoch(history: list[dict]) -> int:
    """The epoch (1-based, its `epoch` field) with the highest validation mAP; the earlier
    one on a tie. Epochs without a validation mAP are skipped; with none, the last epoch."""
    scored = [h for h in history if h.get("val_mAP") is not None]
    if not scored:
        return history[-1]["epoch"]
    return max(scored, key=lambda h: (h["val_mAP"], -h["epoch"]))["epoch"]


def epochs_without_improvement(history: list[dict]) -> int:
    """Epochs trained since the best one (0: the last epoch is the best)."""
    return history[-1]["epoch"] - choose_best_epoch(history)


def mean_ap(targets: np.ndarray, mask: np.ndarray, scores: np.ndarray) -> float:
    """Mean AP over the outputs with both positives and negatives among the known labels."""
    from sklearn.metrics import average_precision_score

    aps = [average_precision_score(targets[mask[:, k], k], scores[mask[:, k], k])
           for k in range(scores.shape[1]) if 0 < targets[mask[:, k], k].sum() < mask[:, k].sum()]
    return float(np.mean(aps)) if aps else 0.0


def ranked(logits: np.ndarray, heads: tuple[slice, ...]) -> np.ndarray:
    """What ranks like the scores: the logits, within the softmax `heads` their softmax."""
    out = logits.copy()
    for sl in heads:  # the other outputs keep their logits: sigmoid would not reorder them
        out[:, sl] = apply_temperature(logits[:, sl], 1.0, (slice(None),))
    return out


def attribute_accuracy(taxonomy: Taxonomy, targets: np.ndarray, mask: np.ndarray,
                       logits: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy per `single` attribute over the rows whose value is known (its argmax
    output is the true value); attributes without such rows are left out."""
    out = {}
    for name, sl in single_slices(taxonomy).items():
        known = mask[:, sl].all(axis=1) & (targets[:, sl].sum(axis=1) == 1)
        if known.any():
            hit = logits[known, sl].argmax(axis=1) == targets[known, sl].argmax(axis=1)
            out[name] = round(float(hit.mean()), 5)
    return out


def _figures(logits: np.ndarray, fit: Fit, config: TrainConfig, taxonomy: Taxonomy,
             targets: np.ndarray, mask: np.ndarray) -> dict:
    """Validation loss, mAP, mean and per-attribute top-1 accuracy of one set of logits."""
    heads = fit.heads
    t = lambda a: torch.from_numpy(a).to(fit.device)  # noqa: E731
    with torch.no_grad():
        loss = fit.loss(t(logits).float(), t(targets.astype(np.float32)), t(mask), config)
    accuracy = attribute_accuracy(taxonomy, targets, mask, logits)
    return dict(val_loss=round(float(loss), 5), val_mAP=round(mean_ap(targets, mask, ranked(logits, heads)), 5),
                val_accuracy=round(float(np.mean(list(accuracy.values()))), 5) if accuracy else None,
                val_attribute_accuracy=accuracy)


def score_epoch(fit: Fit, loader: DataLoader, config: TrainConfig, taxonomy: Taxonomy) -> tuple[dict, nn.Module]:
    """The epoch's validation figures for the history, and the weights they are of (the raw
    model or the EMA's, whichever has the higher mAP; raw on a tie)."""
    ds = loader.dataset
    targets, mask = ds.targets, ds.mask
    model = unwrap(fit.model)

    def logits_of(net: nn.Module, desc: str) -> np.ndarray:
        # per product: a product's several images pooled as the card's default does
        return ds.pool(predict_scores(net, loader, fit.device, channels_last=config.channels_last,
                                      amp=config.amp, desc=desc, logits=True, normalize=fit.normalize))

    raw = _figures(logits_of(model, "validate"), fit, config, taxonomy, targets, mask)
    if fit.ema is None:
        return {**raw, "weights": "raw"}, model
    ema = _figures(logits_of(fit.ema.module, "validate EMA"), fit, config, taxonomy, targets, mask)
    chosen, net = (ema, fit.ema.module) if ema["val_mAP"] > raw["val_mAP"] else (raw, model)
    return {**chosen, "weights": "ema" if net is not model else "raw",
            "val_mAP_raw": raw["val_mAP"], "val_mAP_ema": ema["val_mAP"]}, net


def cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of `net`'s state_dict, unaffected by later training steps."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def update_best(best: BestWeights | None, history: list[dict], net: nn.Module) -> BestWeights | None:
    """`best` after the history's last epoch, whose candidate weights are `net`."""
    last = history[-1]
    if last.get("val_mAP") is None or choose_best_epoch(history) != last["epoch"]:
        return best
    return BestWeights(last["epoch"], last.get("weights") or "raw", cpu_state(net))


def log_epoch(entry: dict) -> None:
    """One line per epoch with the validation figures."""
    if entry.get("val_mAP") is None:
        return
    acc = entry.get("val_accuracy")
    log.info("epoch %d: train loss %.4f, val loss %.4f, val mAP %.4f, val accuracy %s (%s weights)",
             entry["epoch"], entry["train_loss"], entry["val_loss"], entry["val_mAP"],
             "-" if acc is None else f"{acc:.4f}", entry.get("weights", "raw"))


@dataclass
class EpochWatch:
    """Rank 0's view of the run after each epoch: the validation loader, the best weights
    so far and the TensorBoard event log."""

    loader: DataLoader  # the validation split, not shuffled
    taxonomy: Taxonomy
    events: EventLog
    best: BestWeights | None = None

    def record(self, fit: Fit, config: TrainConfig, history: list[dict]) -> None:
        """Score the epoch just trained into its history entry; keep its weights if best."""
        if len(self.loader.dataset):
            figures, net = score_epoch(fit, self.loader, config, self.taxonomy)
            history[-1].update(figures)
            self.best = update_best(self.best, history, net)
        log_epoch(history[-1])
        self.events.add_epoch(history[-1])
