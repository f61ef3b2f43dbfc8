"""Epoch checkpoints: what a killed or crashed training run resumes from (`resume`).

After every epoch rank 0 overwrites one checkpoint, tagger.lake.checkpoint_path(key): the
weights, optimizer, schedule, grad scaler, EMA, the epoch history and the best epoch's
weights (what gets registered). The key hashes the
config fields that change what is learned and the data snapshot, so a resume continues only
the same training on the same data; anything else starts fresh. The checkpoint is deleted
once its version is registered.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
from pathlib import Path

import torch

from tagger.config import TrainConfig
from tagger.io.storage import Storage
from tagger.lake import CHECKPOINTS, checkpoint_path
from tagger.model.device import unwrap
from tagger.train.epochs import BestWeights
from tagger.train.loop import Fit

log = logging.getLogger(__name__)


def checkpoint_key(config: TrainConfig, snapshot: str) -> str:
    """Names a run's checkpoint: the config that shapes the model, and the data snapshot."""
    # Fields that do not change what is learned may differ between a run and its resume.
    stable = config.model_dump(exclude={"resume", "workers", "log_every", "epochs", "device", "patience"})
    return hashlib.sha256(json.dumps([stable, snapshot], sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(storage: Storage, key: str, fit: Fit, epoch: int, history: list[dict],
                    best: BestWeights | None = None) -> None:
    """Write the state after `epoch` (0-based) with the history so far and the best weights."""
    state = dict(model=unwrap(fit.model).state_dict(), optimizer=fit.optimizer.state_dict(),
                 ema=fit.ema.state_dict() if fit.ema is not None else {},
                 scheduler=fit.scheduler.state_dict(), scaler=fit.scaler.state_dict(), epoch=epoch,
                 history=json.dumps(history),
                 best={} if best is None else dict(epoch=best.epoch, weights=best.weights,
                                                   state=best.state))
    with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        local = Path(tmp) / "last.ckpt"
        torch.save(state, local)
        storage.upload(local, checkpoint_path(key))


def load_checkpoint(storage: Storage, key: str) -> dict | None:
    """The checkpoint's state, or None where the run has none."""
    path = checkpoint_path(key)
    if not storage.exists(path):
        return None
    # weights_only: a checkpoint is data, never code.
    return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)


def resume_training(storage: Storage, key: str, fit: Fit) -> tuple[int, list[dict], BestWeights | None]:
    """Load the run's checkpoint into `fit` (its model not wrapped yet); returns (the epoch
    to start from, the history so far, the best weights so far): (0, [], None) without a
    checkpoint."""
    ckpt = load_checkpoint(storage, key)
    if ckpt is None:
        log.warning("resume: no checkpoint for this config and data (%s); starting fresh", key)
        return 0, [], None
    fit.model.load_state_dict(ckpt["model"])
    fit.optimizer.load_state_dict(ckpt["optimizer"])
    fit.scheduler.load_state_dict(ckpt["scheduler"])
    fit.scaler.load_state_dict(ckpt["scaler"])
    if fit.ema is not None and ckpt.get("ema"):
        fit.ema.load_state_dict(ckpt["ema"])
    start_epoch, history = ckpt["epoch"] + 1, json.loads(ckpt["history"])
    saved = ckpt.get("best") or {}
    best = BestWeights(saved["epoch"], saved["weights"], saved["state"]) if saved else None
    log.info("resumed from epoch %d of checkpoint %s", start_epoch, key)
    return start_epoch, history, best


def delete_checkpoint(storage: Storage, key: str) -> None:
    """Remove the run's checkpoint: its version is registered, nothing is left to resume."""
    storage.delete_prefix(f"{CHECKPOINTS}/{key}")
