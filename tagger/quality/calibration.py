"""Temperature scaling (Guo et al. 2017) and the expected calibration error.

A score is calibrated when, of all entries scored about 0.8, about 80% are positive.
BCE-trained multi-label models, pos_weight-balanced ones most of all, are not: pos_weight
pushes every score up. One temperature per attribute, fitted on the validation split,
turns logits into calibrated probabilities, ``sigmoid(logit / T)``. It is monotone, so it
changes no ranking (AP) and, with thresholds tuned after it, no max-F1 decision; it makes
the scores readable ("0.9" means nine in ten are right) and the precision targets of
`thresholds.precision_thresholds` meaningful. For a softmax head's attribute the
temperature divides its logits before the softmax: ``softmax(logits / T)``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

T_MIN, T_MAX = 0.05, 20.0


def _nll(logits: np.ndarray, positive: np.ndarray, temperature: float) -> float:
    from scipy.special import log_expit  # fitting only, like _search

    z = logits / temperature
    return float(-(np.where(positive, log_expit(z), log_expit(-z))).mean())


def _softmax_nll(logits: np.ndarray, label: np.ndarray, temperature: float) -> float:
    from scipy.special import log_softmax

    z = log_softmax(logits / temperature, axis=1)
    return float(-z[np.arange(len(z)), label].mean())


def _search(nll) -> float:
    from scipy.optimize import minimize_scalar  # fitting only: applying temperatures needs none

    res = minimize_scalar(lambda log_t: nll(float(np.exp(log_t))),
                          bounds=(np.log(T_MIN), np.log(T_MAX)), method="bounded",
                          options={"xatol": 1e-4})
    return round(float(np.exp(res.x)), 5)


def fit_temperatures(
    logits: np.ndarray, targets: np.ndarray, mask: np.ndarray, slices: Mapping[str, slice],
    softmax_slices: Collection[slice] = (),
) -> dict[str, float]:
    """One temperature per attribute minimising the negative log-likelihood of its known
    labels, searched in [T_MIN, T_MAX] on a log scale. Sigmoid outputs: the BCE of the known
    entries; an attribute without both a known positive and a known negative keeps 1.0. An
    attribute whose slice is in `softmax_slices`: the cross-entropy of its softmax over the
    rows known with exactly one value; without rows of two different values it keeps 1.0."""
    logits = np.asarray(logits, dtype=np.float64)
    positive = np.asarray(targets) > 0.5
    known = np.asarray(mask, dtype=bool)
    out = {}
    for attribute, sl in slices.items():
        if sl in softmax_slices:
            rows = known[:, sl].all(axis=1) & (positive[:, sl].sum(axis=1) == 1)
            z, label = logits[rows, sl], positive[rows, sl].argmax(axis=1)
            informative = len(np.unique(label)) > 1
            out[attribute] = _search(lambda t: _softmax_nll(z, label, t)) if informative else 1.0
            continue
        k = known[:, sl]
        z, y = logits[:, sl][k], positive[:, sl][k]
        informative = y.any() and (~y).any()
        out[attribute] = _search(lambda t: _nll(z, y, t)) if informative else 1.0
    return out


def temperature_vector(temperatures: Mapping[str, float] | None, slices: Mapping[str, slice],
                       num_outputs: int) -> np.ndarray:
    """float32 [K] temperature per output (1.0 where none was fitted)."""
    out = np.ones(num_outputs, dtype=np.float32)
    for attribute, t in (temperatures or {}).items():
        if attribute in slices:
            out[slices[attribute]] = t
    return out


def apply_temperature(logits: np.ndarray, temperature: np.ndarray | float = 1.0,
                      softmax_slices: Collection[slice] = ()) -> np.ndarray:
    """float32 scores sigmoid(logit / T); within each of `softmax_slices` (the attributes of
    a softmax head) softmax(logits[:, slice] / T) instead, so the slice's scores sum to 1.
    `temperature`: a scalar or one per output ([K])."""
    z = np.asarray(logits, dtype=np.float32) / np.asarray(temperature, dtype=np.float32)
    # numpy, not scipy.special: importing scipy.special costs a tagging run 0.13 s, and
    # this form of the sigmoid cannot overflow
    scores = 0.5 + 0.5 * np.tanh(0.5 * z)
    for sl in softmax_slices:
        e = np.exp(z[:, sl] - z[:, sl].max(axis=1, keepdims=True))
        scores[:, sl] = e / e.sum(axis=1, keepdims=True)
    return scores


def expected_calibration_error(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                               bins: int = 15) -> float | None:
    """ECE over all known entries pooled: the support-weighted mean over equal-width score
    bins of |share of positives - mean score|. None without known entries."""
    known = np.asarray(mask, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)[known]
    y = (np.asarray(targets) > 0.5)[known]
    if s.size == 0:
        return None
    idx = np.minimum((s * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=y, minlength=bins) - np.bincount(idx, weights=s, minlength=bins))
    return float(gap.sum() / count.sum())
