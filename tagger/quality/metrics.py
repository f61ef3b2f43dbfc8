"""Evaluation metrics for masked multi-label predictions.

Only known entries (mask True) count anywhere. The result is plain JSON:
Python floats/ints, with undefined values (NaN) reported as None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    hamming_loss,
    precision_recall_fscore_support,
)


def _num(x: float | None) -> float | None:
    """Plain float, or None for missing/NaN."""
    if x is None or math.isnan(float(x)):
        return None
    return float(x)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def compute_value_metrics(y_true: np.ndarray, decided: np.ndarray, score: np.ndarray) -> dict:
    """Metrics of one output over its known rows (already selected).

    ``ap`` is None unless there is at least one positive and one negative:
    with one class only it is undefined or trivially 1.
    """
    known, support = int(len(y_true)), int(y_true.sum())
    p = r = f = 0.0
    if known:
        p, r, f, _ = precision_recall_fscore_support(
            y_true, decided, labels=[True], average=None, zero_division=0
        )
        p, r, f = float(p[0]), float(r[0]), float(f[0])
    ap = None
    if 0 < support < known:
        ap = _num(average_precision_score(y_true, score))
    return {"precision": p, "recall": r, "f1": f, "ap": ap, "support": support, "known": known}


def compute_single_accuracy(
    positive: np.ndarray, known: np.ndarray, decisions: np.ndarray, scores: np.ndarray | None = None
) -> dict:
    """Accuracy and coverage of one single attribute (arrays are its slice).

    Evaluated on rows whose slice is fully known with exactly one true value;
    a row without a decision counts as wrong. With scores, also ``top1_accuracy``: the
    highest-scoring value always answers (how a softmax classifier is usually scored, so
    the figure to compare with published single-label results).
    """
    rows = known.all(axis=1) & (positive.sum(axis=1) == 1)
    if not rows.any():
        return {"accuracy": None, "coverage": None, **({"top1_accuracy": None} if scores is not None else {})}
    extra = {}
    if scores is not None:
        extra["top1_accuracy"] = float(accuracy_score(positive[rows].argmax(axis=1),
                                                      np.asarray(scores)[rows].argmax(axis=1)))
    true_idx = positive[rows].argmax(axis=1)
    decided = decisions[rows]
    has_decision = decided.any(axis=1)
    # -1 never equals a true index, so abstentions count as errors.
    pred_idx = np.where(has_decision, decided.argmax(axis=1), -1)
    return {
        "accuracy": float(accuracy_score(true_idx, pred_idx)),
        "coverage": float(has_decision.mean()),
        **extra,
    }


def _check_single_slices(
    outputs: Sequence[tuple[str, str]], single_slices: Mapping[str, slice]
) -> None:
    for attribute, sl in single_slices.items():
        names = {a for a, _ in outputs[sl]}
        if names != {attribute}:
            raise ValueError(f"slice {sl} of single attribute {attribute!r} covers {names}")


def compute_pooled_metrics(positive: np.ndarray, known: np.ndarray, decisions: np.ndarray) -> dict:
    """micro_f1, hamming_loss and support over all known entries pooled."""
    support = int(known.sum())
    if support == 0:
        return {"micro_f1": None, "hamming_loss": None, "support": 0}
    y_true, y_pred = positive[known], decisions[known]
    _, _, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=[True], average=None, zero_division=0
    )
    return {
        "micro_f1": float(f1[0]),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "support": support,
    }


def compute_review_metrics(positive: np.ndarray, known: np.ndarray, decisions: np.ndarray,
                           review: np.ndarray) -> dict:
    """How the decisions on known entries split into auto-published and needs-review tags,
    and the precision of each part (None where a part is empty)."""
    decided = np.asarray(decisions, dtype=bool) & known
    flagged = decided & np.asarray(review, dtype=bool)
    auto = decided & ~flagged
    n = int(decided.sum())

    def precision(part):
        return float(positive[part].mean()) if part.any() else None

    return {"decisions": n, "auto_share": float(auto.sum() / n) if n else None,
            "auto_precision": precision(auto), "review_share": float(flagged.sum() / n) if n else None,
            "review_precision": precision(flagged)}


def compute_metrics(
    targets: np.ndarray,
    mask: np.ndarray,
    scores: np.ndarray,
    decisions: np.ndarray,
    outputs: Sequence[tuple[str, str]],
    single_slices: Mapping[str, slice],
) -> dict:
    """Global, per-value and per-attribute metrics over known entries.

    Keys: micro_f1, macro_f1 (outputs with a known positive), mAP (outputs
    with a known positive and negative), hamming_loss, support (known entries),
    per_value {attribute: {value: precision/recall/f1/ap/support/known}},
    per_attribute {attribute: macro_f1/known [+ accuracy/coverage if single]}.
    ``outputs[k]`` names column k; attributes absent from ``single_slices``
    are multi-valued.
    """
    positive = np.asarray(targets) > 0.5
    known = np.asarray(mask, dtype=bool)
    scores, decisions = np.asarray(scores), np.asarray(decisions, dtype=bool)
    outputs = [tuple(o) for o in outputs]
    if len(outputs) != positive.shape[1]:
        raise ValueError("outputs must name every column")
    _check_single_slices(outputs, single_slices)

    value_metrics = []
    for k in range(len(outputs)):
        rows = known[:, k]
        value_metrics.append(
            compute_value_metrics(positive[rows, k], decisions[rows, k], scores[rows, k])
        )
    per_value: dict[str, dict[str, dict]] = {}
    columns: dict[str, list[int]] = {}
    for k, ((attribute, value), m) in enumerate(zip(outputs, value_metrics)):
        per_value.setdefault(attribute, {})[value] = m
        columns.setdefault(attribute, []).append(k)

    per_attribute = {}
    for attribute, cols in columns.items():
        entry = {
            "macro_f1": _mean([value_metrics[k]["f1"] for k in cols if value_metrics[k]["support"]]),
            "known": int(known[:, cols].any(axis=1).sum()),
        }
        if attribute in single_slices:
            sl = single_slices[attribute]
            entry.update(compute_single_accuracy(positive[:, sl], known[:, sl], decisions[:, sl],
                                                 scores[:, sl]))
        per_attribute[attribute] = entry

    return {
        **compute_pooled_metrics(positive, known, decisions),
        "macro_f1": _mean([m["f1"] for m in value_metrics if m["support"]]),
        "mAP": _mean([m["ap"] for m in value_metrics if m["ap"] is not None]),
        "per_value": per_value,
        "per_attribute": per_attribute,
    }

