"""An evaluation of decisions against labels: metrics, calibration, and the report.

Used after training (the validation split, under models/<version>/) and by `tagger evaluate`
(tagger/model/evaluate.py) on any labelled catalog export the model never saw
(models/<version>/evaluations/<name>/). Unknown labels stay unknown: only known entries
count, exactly as training masks them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from catalog_schemas.tables import EVALUATION_PREDICTIONS
from catalog_schemas.taxonomy import Taxonomy
from tagger.io.storage import Storage
from tagger.labels import single_slices
from tagger.quality import plots
from tagger.quality.calibration import apply_temperature, expected_calibration_error
from tagger.quality.metrics import compute_metrics, compute_review_metrics
from tagger.quality.report import render_metrics_markdown, render_tuned_on
from tagger.quality.thresholds import compute_decisions, review_flags

log = logging.getLogger(__name__)


def compute_evaluation(taxonomy: Taxonomy, targets, mask, scores, thresholds,
                       auto_thresholds=None, min_precision: float | None = None,
                       argmax_slices: Collection[slice] = ()) -> tuple[np.ndarray, dict]:
    """(decisions, metrics) with single attributes decoded as one choice (those in
    `argmax_slices`, a softmax head's, as their argmax value or none: compute_decisions); with
    auto-publish thresholds, metrics["review"] says how the decisions split into auto and review."""
    singles = single_slices(taxonomy)
    decisions = compute_decisions(scores, thresholds, list(singles.values()),
                                  argmax_slices=argmax_slices)
    metrics = compute_metrics(targets, mask, scores, decisions, taxonomy.outputs, singles)
    if auto_thresholds is not None:
        review = review_flags(scores, decisions, auto_thresholds)
        metrics["review"] = {"min_precision": min_precision, **compute_review_metrics(
            np.asarray(targets) > 0.5, np.asarray(mask, dtype=bool), decisions, review)}
    return decisions, metrics


def prediction_table(taxonomy: Taxonomy, product_ids, targets, mask, scores, decisions) -> pa.Table:
    """EVALUATION_PREDICTIONS: the known entries of the [N, K] arrays, one row per product and
    value, in product then output order."""
    known = np.asarray(mask, dtype=bool)
    rows, cols = np.nonzero(known)
    # Arrow's take, not Python strings per row: an export of 100k products with 500 values
    # is 50M rows
    at, of = pa.array(rows), pa.array(cols)
    return pa.Table.from_arrays([
        pa.array(list(product_ids), pa.string()).take(at),
        pa.array([a for a, _ in taxonomy.outputs], pa.string()).take(of),
        pa.array([v for _, v in taxonomy.outputs], pa.string()).take(of),
        pa.array(np.asarray(targets)[rows, cols] > 0.5),
        pa.array(np.asarray(decisions, dtype=bool)[rows, cols]),
        pa.array(np.asarray(scores, dtype=np.float32)[rows, cols]),
    ], schema=EVALUATION_PREDICTIONS)


def calibration_metrics(logits, scores, targets, mask, temperatures: dict,
                        softmax_slices: tuple[slice, ...] = ()) -> dict:
    """ECE of the uncalibrated scores (the head's sigmoid or softmax of the logits, T = 1) and
    of the scores used."""
    raw = apply_temperature(logits, 1.0, softmax_slices)
    return {"temperature": temperatures or None,
            "ece_before": expected_calibration_error(raw, targets, mask),
            "ece_after": expected_calibration_error(scores, targets, mask)}


@dataclass(frozen=True)
class Evaluated:
    """What a report shows: labels, scores and decisions of the same products ([N, K] arrays
    in output order), their metrics, and the thresholds by attribute and value."""

    taxonomy: Taxonomy
    targets: np.ndarray
    mask: np.ndarray
    scores: np.ndarray
    decisions: np.ndarray
    metrics: dict
    thresholds: dict[str, dict[str, float]]
    auto_thresholds: dict[str, dict[str, float | None]] | None = None


def _pr_curves(taxonomy, targets, mask, scores, metrics, n: int = 4):
    """The n best and n worst values by AP among those with at least 5 known positives."""
    ranked = []
    for k, (attr, value) in enumerate(taxonomy.outputs):
        vm = metrics["per_value"][attr][value]
        if vm["ap"] is not None and vm["support"] >= 5:
            ranked.append((vm["ap"], k, f"{attr}={value}"))
    ranked.sort()
    picked = ranked[:n] + ranked[-n:] if len(ranked) > 2 * n else ranked
    return [(label, targets[mask[:, k], k], scores[mask[:, k], k], ap) for ap, k, label in picked]


def _single_choices(taxonomy, targets, mask, decisions, attr) -> tuple[list[str], list[str]]:
    sl = taxonomy.slices[attr]
    values = taxonomy.attribute(attr).values
    rows = mask[:, sl].all(axis=1) & (targets[:, sl].sum(axis=1) == 1)
    true = [values[i] for i in targets[rows, sl].argmax(axis=1)]
    dec = decisions[rows, sl]
    pred = [values[i] if d.any() else "(none)" for i, d in zip(dec.argmax(axis=1), dec)]
    return true, pred


def write_evaluation_report(storage: Storage, prefix: str, title: str, intro: str,
                            evaluated: Evaluated, *, tuned_on: Evaluated | None = None) -> str:
    """report.md, metrics.json and PNG plots under `prefix`; returns the report's URI.
    `tuned_on`: the split the thresholds were tuned on, reported after `evaluated` (which is
    then the held-out split) and kept in metrics.json under "validation"."""
    e = evaluated
    images: dict[str, str] = {}

    def put(name: str, data: bytes, caption: str):
        storage.write_bytes(f"{prefix}/{name}", data)
        images[caption] = name

    put("per_attribute.png", plots.plot_attributes(e.metrics["per_attribute"]), "Per attribute")
    curves = _pr_curves(e.taxonomy, e.targets, e.mask, e.scores, e.metrics)
    if curves:
        put("pr_curves.png", plots.plot_pr_curves(curves), "Precision-recall: best and worst values")
    for attr in single_slices(e.taxonomy):
        true, pred = _single_choices(e.taxonomy, e.targets, e.mask, e.decisions, attr)
        if true:
            put(f"confusion_{attr}.png", plots.plot_confusion(attr, true, pred), f"Confusion: {attr}")
    kinds = {a.name: a.kind for a in e.taxonomy.attributes}
    md = render_metrics_markdown(title, intro, e.metrics, e.thresholds, kinds, images=images,
                                 auto_thresholds=e.auto_thresholds)
    metrics = e.metrics
    if tuned_on is not None:
        md += render_tuned_on(tuned_on.metrics, kinds)
        metrics = {**metrics, "validation": tuned_on.metrics}
    storage.write_bytes(f"{prefix}/report.md", md.encode())
    storage.write_bytes(f"{prefix}/metrics.json", json.dumps(metrics, indent=2).encode())
    log.info("wrote evaluation report %s", storage.url(f"{prefix}/report.md"))
    return storage.url(f"{prefix}/report.md")
