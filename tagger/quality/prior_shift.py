"""How much of the class weighting a softmax attribute's decision undoes, chosen on validation.

Class weights (TrainConfig.class_weight) train a softmax head as if rare values were more
frequent than they are: the rare values' recall and the macro-F1 go up, and so does the
share of common products tagged with a rare value, which costs accuracy. Training with a
weight w_c per value shifts the learned logits by about log w_c (weighted cross-entropy is
minimised by the weighted posterior), so `logit - tau * log w_c` takes back a share tau of
it: tau 0 decides as trained, 1 as if trained without weights (logit adjustment, Menon et
al. 2021). Per attribute, tau is chosen from TAUS on the validation logits by top-1 accuracy
plus macro-F1 (both over the rows whose value is known), the two figures the weighting
trades, with the one-standard-error rule: the smallest tau whose score is within one
bootstrap standard error of the best one's gain over tau 0. A rare value has a handful of
validation rows, so the plain best is often noise: on the real catalog's test split it cost
one model 1.8 points of macro-F1 (subCategory 0.899 -> 0.785) for 0.2 of accuracy, where
the rule, replayed on the saved logits of four models, kept macro-F1 within 0.1 point of
the model as trained or above it (benchmarks/README.md).

The shift is a constant per output, so it folds into the bias of the model's output layer
(tagger.model.factory.fold_into_output_bias): every scorer (torch, ONNX Runtime, TTA,
several images pooled) then computes the shifted logits with no code of its own, and the
temperatures and thresholds are tuned on them afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tagger.quality.compare import accuracy_and_macro_f1

TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


BOOTSTRAP = 200  # resamples of the validation rows for the standard error


def top1_plus_macro_f1(y: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None,
                       classes: int | None = None) -> np.ndarray:
    """Top-1 accuracy + macro-F1 (over the values present) of `predicted` against `y`
    (int [N]; a predicted label >= `classes` abstains: wrong, and called for no value): one
    score, or one per row of `weights` [R, N] (row multiplicities, a bootstrap resample each)."""
    accuracy, macro_f1 = accuracy_and_macro_f1(y, predicted, weights, classes)
    return accuracy + macro_f1


def one_standard_error_pick(y: np.ndarray, predictions: Sequence[np.ndarray], classes: int,
                            rng: np.random.Generator) -> int:
    """Index of the prediction (int labels [N] each; a label >= `classes` is an
    abstention, wrong and of no value) to take by top-1 accuracy + macro-F1 with the
    one-standard-error rule: the first, as trained, unless a later one's gain over it is
    beyond one bootstrap standard error; then the first within one standard error of the best."""
    scores = np.array([top1_plus_macro_f1(y, p, classes=classes) for p in predictions])
    best = int(scores.argmax())  # the first of equals
    se = 0.0
    if best:
        resamples = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=BOOTSTRAP)
        gain = (top1_plus_macro_f1(y, predictions[best], resamples, classes)
                - top1_plus_macro_f1(y, predictions[0], resamples, classes))
        se = float(gain.std())
    return next(i for i, score in enumerate(scores) if score >= scores[best] - se)


def known_single_rows(targets: np.ndarray, mask: np.ndarray, sl: slice) -> np.ndarray:
    """bool [N]: the rows whose value of the single attribute at `sl` is known."""
    return np.asarray(mask[:, sl], bool).all(1) & ((np.asarray(targets[:, sl]) > 0.5).sum(1) == 1)


def choose_per_attribute(candidates: Sequence[tuple[float, np.ndarray]], targets: np.ndarray,
                         mask: np.ndarray, slices: Mapping[str, slice], *,
                         seed: int = 0) -> dict[str, float]:
    """Per attribute of `slices` (name -> output slice), a setting chosen on validation by
    top-1 accuracy + macro-F1 over the rows of known value, with the one-standard-error
    rule (one_standard_error_pick). `candidates`: (setting, logits [N, K]), the setting as
    trained first, then in order of preference (an attribute without a row of known value
    gets the first)."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, float] = {}
    for name, sl in slices.items():
        known = known_single_rows(targets, mask, sl)
        if not known.any():
            chosen[name] = float(candidates[0][0])
            continue
        y = np.asarray(targets[known, sl]).argmax(1)
        predicted = [np.asarray(z[known, sl]).argmax(1) for _, z in candidates]
        pick = one_standard_error_pick(y, predicted, sl.stop - sl.start, rng)
        chosen[name] = float(candidates[pick][0])
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
