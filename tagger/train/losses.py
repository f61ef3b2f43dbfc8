"""Class-balancing weights and the masked losses: multi-label (BCE, focal, ASL) and, for
`single` attributes under head softmax, one cross-entropy per attribute.

Entries whose label is unknown (or whose attribute does not apply) are marked
False in ``mask``; they contribute nothing to weights or loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

# focal / ASL defaults: the papers' settings (Lin et al. 2017; Ridnik et al. 2021).
GAMMA, GAMMA_NEG, CLIP = 2.0, 4.0, 0.05


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


def compute_class_weights(
    targets: np.ndarray,
    mask: np.ndarray,
    slices: Sequence[slice],
    mode: Literal["none", "sqrt", "linear"] = "none",
    max_weight: float = 50.0,
) -> np.ndarray:
    """Per-output class weight of the softmax head: the counterpart of pos_weight.

    For each `single` attribute's slice, over the rows where it is known with exactly one
    value: 1 / (rows of the value), to the power 1 ('linear') or 1/2 ('sqrt'), normalised to
    mean 1 over the values that have rows, then clipped to [1/max_weight, max_weight]. A value
    without rows, every output outside `slices`, and mode 'none' get 1.0 (inverse frequency
    rather than pos_weight's negatives/positives: one softmax has no per-value negatives).
    Returns float32 [K].
    """
    if mode not in ("linear", "sqrt", "none"):
        raise ValueError(f"unknown class_weight mode: {mode!r} (none, sqrt, linear)")
    if max_weight < 1.0:
        raise ValueError("max_weight must be >= 1")
    targets = np.asarray(targets)
    out = np.ones(targets.shape[1], dtype=np.float64)
    if mode == "none":
        return out.astype(np.float32)
    known = np.asarray(mask, dtype=bool)
    for sl in slices:
        positive = targets[:, sl] > 0.5
        rows = known[:, sl].all(axis=1) & (positive.sum(axis=1) == 1)
        counts = positive[rows].sum(axis=0).astype(np.float64)
        seen = counts > 0
        if not seen.any():
            continue
        w = (1.0 / counts[seen]) ** (1.0 if mode == "linear" else 0.5)
        block = np.ones_like(counts)
        block[seen] = w / w.mean()
        out[sl] = block
    return np.clip(out, 1.0 / max_weight, max_weight).astype(np.float32)


def _bce_entries(
    logits: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
    pos_weight: torch.Tensor | None,
) -> torch.Tensor:
    """Per-entry BCE with logits [N, K] in float32, 0 where `known` is False."""
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
    return torch.where(known, per_entry, torch.zeros_like(per_entry))


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
    return _bce_entries(logits, targets, known, pos_weight).sum() / known.sum().clamp(min=1)


def _multilabel_entries(
    logits: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
    pos_weight: torch.Tensor | None,
    kind: str,
    gamma: float,
    gamma_neg: float,
    clip: float,
) -> torch.Tensor:
    """Per-entry loss [N, K] of masked_multilabel_loss, 0 where `known` is False."""
    if kind == "bce":
        return _bce_entries(logits, targets, known, pos_weight)
    if kind not in ("focal", "asl"):
        raise ValueError(f"unknown loss: {kind!r} (bce, focal, asl)")
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
    return torch.where(known, per_entry, torch.zeros_like(per_entry))


def masked_multilabel_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    *,
    kind: Literal["bce", "focal", "asl"] = "bce",
    gamma: float = GAMMA,
    gamma_neg: float = GAMMA_NEG,
    clip: float = CLIP,
) -> torch.Tensor:
    """Masked multi-label loss over known entries: 'bce' (masked_bce_with_logits),
    'focal' (Lin et al. 2017: BCE scaled by (1 - p_t)^gamma, so easy entries count less) or
    'asl' (asymmetric loss, Ridnik et al. 2021: negatives scaled by p_m^gamma_neg with the
    probability shifted down by `clip`, positives unscaled; suits many easy negatives).
    pos_weight multiplies the positive term in all three. focal with gamma=0 and asl with
    gamma_neg=0, clip=0 are exactly BCE."""
    known = mask.to(torch.bool)
    per_entry = _multilabel_entries(logits, targets, known, pos_weight, kind, gamma, gamma_neg, clip)
    return per_entry.sum() / known.sum().clamp(min=1)


def single_label_rows(targets: torch.Tensor, mask: torch.Tensor, sl: slice) -> torch.Tensor:
    """bool [N]: rows whose attribute `sl` is known (mask all True) with exactly one value."""
    return mask[:, sl].to(torch.bool).all(dim=1) & ((targets[:, sl] > 0.5).sum(dim=1) == 1)


def _softmax_term(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, sl: slice,
                  class_weight: torch.Tensor | None,
                  label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of w_yi * loss_i, sum of w_yi) of one softmax attribute over its known rows."""
    rows = single_label_rows(targets, mask, sl)
    z = logits[:, sl].float()
    if not bool(rows.any()):
        return z.sum() * 0.0, z.new_zeros(())
    y = targets[rows][:, sl].argmax(dim=1)
    per_row = F.cross_entropy(z[rows], y, label_smoothing=label_smoothing, reduction="none")
    if class_weight is None:
        return per_row.sum(), z.new_tensor(float(len(y)))
    # Each row weighs as its label's class weight, its smoothing included. torch's own
    # `weight=` also weights the smoothing term of every value by that value's weight, which
    # pulls every row toward the rarest values: with a handful of rows a value's weight is
    # ~100x the head value's, and the head value lost all its recall on the real catalog.
    w = class_weight[sl].to(device=z.device, dtype=torch.float32)[y]
    return (w * per_row).sum(), w.sum()


def masked_softmax_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    sl: slice,
    class_weight: torch.Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of one `single` attribute's outputs `sl` as one softmax, over the rows
    where it is known with exactly one value (unknown and not-applicable rows add nothing).

    With class_weight (per output, [K]) it is the mean weighted by each row's label:
    sum_i w_yi * loss_i / sum_i w_yi, where loss_i is the row's cross-entropy with label
    smoothing as torch.nn.functional.cross_entropy defines it (unweighted within the row).
    0 (still part of the graph) when no row is known."""
    total, count = _softmax_term(logits, targets, mask, sl, class_weight, label_smoothing)
    return total / count if bool(count > 0) else total


# The global denominators of the loss's terms from this process's own: the identity outside
# DDP; under DDP the mean over ranks of the all-reduced sums (tagger.train.loop).
Denominators = Callable[[torch.Tensor], torch.Tensor]


def masked_multitask_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    heads: Sequence[slice],
    pos_weight: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
    attribute_weights: torch.Tensor | None = None,
    kind: Literal["bce", "focal", "asl"] = "bce",
    denominators: Denominators | None = None,
) -> torch.Tensor:
    """The training loss of all attributes: one term per softmax attribute plus one for
    every other output, summed.

    `heads`: the slices of the attributes trained as one softmax (empty for head sigmoid).
    Each is masked_softmax_cross_entropy (class_weight, label_smoothing), a weighted mean
    over its known rows, times its attribute's weight. Every other output (multi
    attributes; every output with head sigmoid) shares one masked_multilabel_loss term
    (pos_weight, `kind`): the sum of its known entries' losses, each times its attribute's
    weight, over the count of those entries. `attribute_weights` is the weight (taxonomy
    `weight`, default 1) of each output's attribute, [K]. Without softmax heads and with all
    weights 1 this is exactly masked_multilabel_loss. The sum grows with the number of
    softmax attributes; AdamW's steps do not depend on the loss's scale.

    Each term is a sum over this batch divided by a count (of known entries, or of class
    weights); `denominators` maps the vector of those counts to the ones to divide by. Under
    DDP it gives each count's mean over the ranks, so the ranks' gradients, averaged by DDP,
    are exactly those of one process over the global batch, for every term.
    """
    known = mask.to(torch.bool)
    if heads:
        known = known.clone()
        for sl in heads:
            known[:, sl] = False
    per_entry = _multilabel_entries(logits, targets, known, pos_weight, kind, GAMMA, GAMMA_NEG, CLIP)
    if attribute_weights is not None:
        per_entry = per_entry * attribute_weights.to(device=per_entry.device, dtype=torch.float32)
    totals = [per_entry.sum()]
    counts = [known.sum().float()]
    omegas = [None]
    for sl in heads:
        total, count = _softmax_term(logits, targets, mask, sl, class_weight, label_smoothing)
        totals.append(total)
        counts.append(count.detach().float())
        omegas.append(None if attribute_weights is None else attribute_weights[sl.start])
    if denominators is None:
        # One process: exactly the earlier per-term means (the BCE term's count clamped at 1).
        loss = totals[0] / counts[0].clamp(min=1)
        for total, count, omega in zip(totals[1:], counts[1:], omegas[1:]):
            term = total / count if bool(count > 0) else total
            loss = loss + (term if omega is None else omega * term)
        return loss
    den = denominators(torch.stack(counts))
    loss = totals[0] / den[0].clamp(min=1e-12)
    for i, (total, omega) in enumerate(zip(totals[1:], omegas[1:]), start=1):
        term = total / den[i].clamp(min=1e-12)
        loss = loss + (term if omega is None else omega * term)
    return loss
