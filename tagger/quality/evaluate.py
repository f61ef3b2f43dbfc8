"""Evaluation of a model on labelled products: metrics, a Markdown report and plots.

Used after training (validation split, under models/<version>/) and by `tagger evaluate`
on any labelled catalog export the model never saw (models/<version>/evaluations/<name>/).
Unknown labels stay unknown: only known entries count, exactly as training masks them.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import PurePosixPath

import numpy as np

from catalog_schemas.taxonomy import Taxonomy, load_taxonomy
from tagger.config import TagConfig
from tagger.ingest.run import ingest_catalog
from tagger.io.storage import Storage, open_storage
from tagger.labels import encode_labels, single_slices
from tagger.lake import EVALUATIONS, model_path, read_products
from tagger.model.scoring import card_arrays, score_images
from tagger.model.versions import load_model
from tagger.quality import plots
from tagger.quality.calibration import apply_temperature, expected_calibration_error
from tagger.quality.metrics import compute_metrics, compute_review_metrics
from tagger.quality.report import render_metrics_markdown
from tagger.quality.thresholds import compute_decisions, review_flags

log = logging.getLogger(__name__)


def compute_evaluation(taxonomy: Taxonomy, targets, mask, scores, thresholds,
                       auto_thresholds=None, min_precision: float | None = None) -> tuple[np.ndarray, dict]:
    """(decisions, metrics) with single attributes decoded as one choice; with auto-publish
    thresholds, metrics["review"] says how the decisions split into auto and review."""
    singles = single_slices(taxonomy)
    decisions = compute_decisions(scores, thresholds, list(singles.values()))
    metrics = compute_metrics(targets, mask, scores, decisions, taxonomy.outputs, singles)
    if auto_thresholds is not None:
        review = review_flags(scores, decisions, auto_thresholds)
        metrics["review"] = {"min_precision": min_precision, **compute_review_metrics(
            np.asarray(targets) > 0.5, np.asarray(mask, dtype=bool), decisions, review)}
    return decisions, metrics


def calibration_metrics(logits, scores, targets, mask, temperatures: dict) -> dict:
    """ECE of the uncalibrated scores (sigmoid of the logits) and of the scores used."""
    return {"temperature": temperatures or None,
            "ece_before": expected_calibration_error(apply_temperature(logits), targets, mask),
            "ece_after": expected_calibration_error(scores, targets, mask)}


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
                            taxonomy: Taxonomy, thresholds: dict, targets, mask, scores,
                            decisions, metrics: dict, *, auto_thresholds: dict | None = None) -> str:
    """report.md, metrics.json and PNG plots under `prefix`; returns the report's URI."""
    images: dict[str, str] = {}

    def put(name: str, data: bytes, caption: str):
        storage.write_bytes(f"{prefix}/{name}", data)
        images[caption] = name

    put("per_attribute.png", plots.plot_attributes(metrics["per_attribute"]), "Per attribute")
    curves = _pr_curves(taxonomy, targets, mask, scores, metrics)
    if curves:
        put("pr_curves.png", plots.plot_pr_curves(curves), "Precision-recall: best and worst values")
    for attr in single_slices(taxonomy):
        true, pred = _single_choices(taxonomy, targets, mask, decisions, attr)
        if true:
            put(f"confusion_{attr}.png", plots.plot_confusion(attr, true, pred), f"Confusion: {attr}")
    kinds = {a.name: a.kind for a in taxonomy.attributes}
    md = render_metrics_markdown(title, intro, metrics, thresholds, kinds, images=images,
                                 auto_thresholds=auto_thresholds)
    storage.write_bytes(f"{prefix}/report.md", md.encode())
    storage.write_bytes(f"{prefix}/metrics.json", json.dumps(metrics, indent=2).encode())
    log.info("wrote evaluation report %s", storage.url(f"{prefix}/report.md"))
    return storage.url(f"{prefix}/report.md")


def evaluate_model(lake: str, catalog: str, *, model_version: str | None = None,
                   taxonomy: str | None = None, name: str | None = None,
                   config: TagConfig | None = None) -> dict:
    """Evaluate a registered model on a labelled catalog export; returns the metrics summary.

    The export is ingested (with the same validation and rejects as any ingest) into
    `evaluations/<name>/` of the lake, never into the lake's own catalog. Its images are
    scored exactly as a tag run scores them (tagger.model.scoring).
    """
    config = config or TagConfig()
    storage = open_storage(lake)
    model, card = load_model(storage, model_version)
    tax = _export_taxonomy(card.taxonomy, taxonomy, card.version)
    name = name or f"{PurePosixPath(str(catalog)).stem}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    eval_lake = storage.url(f"{EVALUATIONS}/{name}")
    ingested = ingest_catalog(str(catalog), tax, eval_lake, run_id=f"evaluate-{name}")
    products, targets, mask = _labelled_products(eval_lake, tax)

    scored = score_images(model, card, eval_lake, [p["image_shard"] for p in products],
                          [p["image_hash"] for p in products], config, desc="evaluate")
    arrays = card_arrays(card)
    decisions, metrics = compute_evaluation(tax, targets, mask, scored.scores, arrays.thresholds,
                                            arrays.auto_thresholds, card.min_precision)
    metrics["calibration"] = calibration_metrics(scored.logits, scored.scores, targets, mask,
                                                 card.temperature)
    metrics["split"] = f"catalog {catalog} ({len(products)} labelled products, never trained on)"
    intro = (f"Model **{card.version}** ({card.backbone}, {card.image_size} px) on "
             f"`{catalog}`: {len(products)} labelled products, {ingested.rejected} rows rejected "
             f"at ingest (see `{eval_lake}/catalog/rejects/`).")
    report = write_evaluation_report(
        storage, model_path(card.version, f"evaluations/{name}"), f"Evaluation {name}", intro,
        tax, card.thresholds, targets, mask, scored.scores, decisions, metrics,
        auto_thresholds=card.auto_thresholds,
    )
    summary = {k: metrics[k] for k in ("micro_f1", "macro_f1", "mAP", "hamming_loss")}
    summary.update(
        model_version=card.version, products=len(products), rejected=ingested.rejected,
        report=report,
        per_attribute={a: {k: v for k, v in am.items()
                           if k in ("accuracy", "coverage", "top1_accuracy", "macro_f1", "known")}
                       for a, am in metrics["per_attribute"].items()},
        calibration=metrics["calibration"], review=metrics.get("review"),
    )
    return summary


def _export_taxonomy(tax: Taxonomy, path: str | None, version: str) -> Taxonomy:
    """The model's taxonomy with the column mapping of the taxonomy file `path`, if given."""
    if not path:
        return tax
    given = load_taxonomy(path)
    if given.outputs != tax.outputs:
        raise ValueError(
            f"Taxonomy {path} does not match model {version}: the model has "
            f"{tax.num_outputs} outputs, the file {given.num_outputs}. Evaluate with the "
            "taxonomy the model was trained on (its card holds it)."
        )
    return tax.model_copy(update={"catalog": given.catalog})  # the export's column mapping


def _labelled_products(eval_lake: str, tax: Taxonomy) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """The ingested products with at least one known label, and their targets and mask."""
    products = read_products(open_storage(eval_lake)).to_pylist()
    targets, mask = encode_labels(tax, [dict(p["labels"]) for p in products],
                                  [p["category"] for p in products])
    known = mask.any(axis=1)
    return [p for p, k in zip(products, known) if k], targets[known], mask[known]
