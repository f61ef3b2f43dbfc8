"""How much of the class weighting a softmax attribute's decision undoes, chosen on validation.

Class weights (TrainConfig.class_weight) train a softmax head as if rare values were more
frequent than they are: the rare values' recall and the macro-F1 go up, and so does the
share of common products tagged with a rare value, which costs accuracy. Training with a
weight w_c per value shifts the learned logits by about log w_c (weighted cross-entropy is
minimised by the weighted posterior), so `logit - tau * log w_c` takes back a share tau of
it: tau 0 decides as trained, 1 as if trained without weights (logit adjustment, Menon et
al. 2021). Per attribute, tau is chosen from TAUS on the validation logits by top-1 accuracy
plus macro-F1 (both over the rows whose value is known), the two figures the weighting
trades; ties go to the smaller tau.

The shift is a constant per output, so it folds into the bias of the model's output layer
(tagger.model.factory.fold_into_output_bias): every scorer (torch, ONNX Runtime, TTA,
several images pooled) then computes the shifted logits with no code of its own, and the
temperatures and thresholds are tuned on them afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _top1_and_macro_f1(y: np.ndarray, logits: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    predicted = logits.argmax(axis=1)
    accuracy = float((predicted == y).mean())
    return accuracy + float(f1_score(y, predicted, labels=np.unique(y), average="macro"))


def choose_prior_shift(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                       slices: Mapping[str, slice], class_weight: np.ndarray,
                       taus=TAUS) -> tuple[np.ndarray, dict[str, float]]:
    """(shift [K] to add to the logits, tau per attribute) for the softmax attributes
    `slices` (name -> output slice). An attribute whose weights are all 1, or without a
    validation row of known value, keeps tau 0."""
    log_w = np.log(np.asarray(class_weight, dtype=np.float64))
    shift = np.zeros(logits.shape[1], dtype=np.float32)
    chosen: dict[str, float] = {}
    for name, sl in slices.items():
        known = np.asarray(mask[:, sl], bool).all(1) & ((np.asarray(targets[:, sl]) > 0.5).sum(1) == 1)
        if not known.any() or not np.any(log_w[sl]):
            chosen[name] = 0.0
            continue
        y, z = np.asarray(targets[known, sl]).argmax(1), np.asarray(logits[known, sl], np.float64)
        found = [(_top1_and_macro_f1(y, z - tau * log_w[sl]), -tau) for tau in taus]
        tau = -max(found)[1]
        chosen[name] = float(tau)
        shift[sl] = (-tau * log_w[sl]).astype(np.float32)
    return shift, chosen
