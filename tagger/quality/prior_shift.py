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

from collections.abc import Mapping, Sequence

import numpy as np

TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


def top1_plus_macro_f1(y: np.ndarray, logits: np.ndarray) -> float:
    """Top-1 accuracy + macro-F1 (over the values present in `y`) of the argmax of `logits`."""
    from sklearn.metrics import f1_score

    predicted = logits.argmax(axis=1)
    accuracy = float((predicted == y).mean())
    return accuracy + float(f1_score(y, predicted, labels=np.unique(y), average="macro"))


def choose_per_attribute(candidates: Sequence[tuple[float, np.ndarray]], targets: np.ndarray,
                         mask: np.ndarray, slices: Mapping[str, slice]) -> dict[str, float]:
    """Per attribute of `slices` (name -> output slice), the setting whose candidate logits
    have the best validation top-1 accuracy + macro-F1 over the rows of known value.
    `candidates`: (setting, logits [N, K]) in order of preference, which wins ties; an
    attribute without a row of known value gets the first."""
    chosen: dict[str, float] = {}
    for name, sl in slices.items():
        known = np.asarray(mask[:, sl], bool).all(1) & ((np.asarray(targets[:, sl]) > 0.5).sum(1) == 1)
        if not known.any():
            chosen[name] = float(candidates[0][0])
            continue
        y = np.asarray(targets[known, sl]).argmax(1)
        found = [(top1_plus_macro_f1(y, np.asarray(z[known, sl], np.float64)), -i)
                 for i, (_, z) in enumerate(candidates)]
        chosen[name] = float(candidates[-max(found)[1]][0])
    return chosen


def choose_prior_shift(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                       slices: Mapping[str, slice], class_weight: np.ndarray,
                       taus=TAUS) -> tuple[np.ndarray, dict[str, float]]:
    """(shift [K] to add to the logits, tau per attribute) for the softmax attributes
    `slices` (name -> output slice). An attribute whose weights are all 1, or without a
    validation row of known value, keeps tau 0."""
    log_w = np.log(np.asarray(class_weight, dtype=np.float64))
    weighted = {name: sl for name, sl in slices.items() if np.any(log_w[sl])}
    taus = sorted(taus)
    chosen = dict.fromkeys(slices, 0.0)
    chosen.update(choose_per_attribute([(tau, logits - tau * log_w) for tau in taus], targets, mask, weighted))
    shift = np.zeros(logits.shape[1], dtype=np.float32)
    for name, sl in slices.items():
        shift[sl] = (-chosen[name] * log_w[sl]).astype(np.float32)
    return shift, chosen
