"""Class-balancing weights and the masked multi-label loss.

Entries whose label is unknown (or whose attribute does not apply) are marked
False in ``mask``; they contribute nothing to weights or loss.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F


def compute_pos_weight(
    targets: np.ndarray,
    mask: np.ndarray,
    *,
    mode: Literal["linear", "sqrt", "none"] = "linear",
    max_weight: float = 50.0,
) -> np.ndarray:
    """Per-output pos_weight = known negatives / known positives.

    'sqrt' takes the square root (milder rebalancing), 'none' gives all ones.
    Clipped to [1/max_weight, max_weight]. An output with no known positive or
    no known negative gets 1.0: the ratio carries no information there.
    Returns float32 [K].
    """
    if mode not in ("linear", "sqrt", "none"):
        raise ValueError(f"unknown pos_weight mode: {mode!r}")
    if max_weight < 1.0:
        raise ValueError("max_weight must be >= 1")
    known = np.asarray(mask, dtype=bool)
    positive = np.asarray(targets) > 0.5
    pos = (positive & known).sum(axis=0).astype(np.float64)
    neg = (~positive & known).sum(axis=0).astype(np.float64)
    informative = (pos > 0) & (neg > 0)
    ratio = np.ones_like(pos)
    ratio[informative] = neg[informative] / pos[informative]
    if mode == "sqrt":
        ratio = np.sqrt(ratio)
    elif mode == "none":
        ratio = np.ones_like(ratio)
    return np.clip(ratio, 1.0 / max_weight, max_weight).astype(np.float32)


def masked_bce_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean binary cross-entropy over known entries (mask True).

    Per-entry BCE with logits (optionally pos_weight per output), zeroed where
    mask is False, divided by max(mask.sum(), 1). Computed in float32 so it is
    safe under autocast.
    """
    known = mask.to(torch.bool)
    logits = logits.float()
    # Unknown targets may be garbage (NaN, -1); replace them before the loss so
    # neither the value nor its gradient can be poisoned.
    targets = torch.where(known, targets.float(), torch.zeros_like(logits))
    if pos_weight is not None:
        pos_weight = pos_weight.to(device=logits.device, dtype=torch.float32)
    # Inputs are float32 and autocast runs this op in float32 anyway.
    per_entry = F.binary_cross_entropy_with_logits(
        logits, targets, reduction="none", pos_weight=pos_weight
    )
    per_entry = torch.where(known, per_entry, torch.zeros_like(per_entry))
    return per_entry.sum() / known.sum().clamp(min=1)


def masked_multilabel_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    *,
    kind: Literal["bce", "focal", "asl"] = "bce",
    gamma: float = 2.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
) -> torch.Tensor:
    """Masked multi-label loss over known entries: 'bce' (masked_bce_with_logits),
    'focal' (Lin et al. 2017: BCE scaled by (1 - p_t)^gamma, so easy entries count less) or
    'asl' (asymmetric loss, Ridnik et al. 2021: negatives scaled by p_m^gamma_neg with the
    probability shifted down by `clip`, positives unscaled; suits many easy negatives).
    pos_weight multiplies the positive term in all three. focal with gamma=0 and asl with
    gamma_neg=0, clip=0 are exactly BCE."""
    if kind == "bce":
        return masked_bce_with_logits(logits, targets, mask, pos_weight)
    if kind not in ("focal", "asl"):
        raise ValueError(f"unknown loss: {kind!r} (bce, focal, asl)")
    known = mask.to(torch.bool)
    logits = logits.float()
    y = torch.where(known, targets.float(), torch.zeros_like(logits))
    p = torch.sigmoid(logits)
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    pw = 1.0 if pos_weight is None else pos_weight.to(device=logits.device, dtype=torch.float32)
    if kind == "focal":
        pos = -pw * (1 - p).pow(gamma) * log_p
        neg = -p.pow(gamma) * log_not_p
    else:
        p_m = (p - clip).clamp(min=0) if clip > 0 else p
        # log(1 - p_m): with the shift, 1 - p_m >= 1 - p, so never below log(1 - p).
        log_not_pm = torch.log1p(-p_m.clamp(max=1 - 1e-6)) if clip > 0 else log_not_p
        pos = -pw * log_p
        neg = -p_m.pow(gamma_neg) * log_not_pm
    per_entry = y * pos + (1 - y) * neg
    per_entry = torch.where(known, per_entry, torch.zeros_like(per_entry))
    return per_entry.sum() / known.sum().clamp(min=1)
