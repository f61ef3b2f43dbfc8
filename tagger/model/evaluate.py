"""`tagger evaluate`: a registered model version on a labelled catalog export it never saw.

The export is ingested into the lake's `evaluations/<name>/` (with the same validation and
rejects as any ingest; never into the lake's own catalog), its images are scored exactly as
a tag run scores them (tagger.model.scoring), and the report goes next to the model, under
`models/<version>/evaluations/<name>/`, with predictions.parquet: every known label beside
the model's score and decision (catalog_schemas.tables.EVALUATION_PREDICTIONS), what two
models are compared on (tagger.quality.compare).
"""

from __future__ import annotations

import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np

from catalog_schemas.tables import EVALUATION_PREDICTIONS
from catalog_schemas.taxonomy import Taxonomy, load_taxonomy
from tagger.config import TagConfig
from tagger.ingest.run import ingest_catalog
from tagger.io.parquet import RowGroupWriter
from tagger.io.storage import open_storage
from tagger.labels import encode_labels
from tagger.lake import EVALUATIONS, model_path, read_products
from tagger.model.scoring import card_arrays, score_images
from tagger.model.production import resolve_version
from tagger.model.versions import load_model
from tagger.quality.evaluation import (
    Evaluated,
    calibration_metrics,
    compute_evaluation,
    prediction_table,
    write_evaluation_report,
)

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.parquet"


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
    model, card = load_model(storage, resolve_version(storage, model_version))
    tax = _export_taxonomy(card.taxonomy, taxonomy, card.version)
    name = name or f"{PurePosixPath(str(catalog)).stem}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    eval_lake = storage.url(f"{EVALUATIONS}/{name}")
    ingested = ingest_catalog(str(catalog), tax, eval_lake, run_id=f"evaluate-{name}")
    products, targets, mask = _labelled_products(eval_lake, tax)

    scored = score_images(model, card, eval_lake, [p["image_shard"] for p in products],
                          [p["image_hash"] for p in products], config, desc="evaluate",
                          texts=[p.get("text") for p in products],
                          more=[p.get("more_images") for p in products])
    arrays = card_arrays(card)
    decisions, metrics = compute_evaluation(tax, targets, mask, scored.scores, arrays.thresholds,
                                            arrays.auto_thresholds, card.min_precision,
                                            argmax_slices=arrays.softmax_slices)
    metrics["calibration"] = calibration_metrics(scored.logits, scored.scores, targets, mask,
                                                 card.temperature, arrays.softmax_slices)
    metrics["split"] = f"catalog {catalog} ({len(products)} labelled products, never trained on)"
    intro = (f"Model **{card.version}** ({card.backbone}, {card.image_size} px) on "
             f"`{catalog}`: {len(products)} labelled products, {ingested.rejected} rows rejected "
             f"at ingest (see `{eval_lake}/catalog/rejects/`).")
    evaluated = Evaluated(tax, targets, mask, scored.scores, decisions, metrics, card.thresholds,
                          card.auto_thresholds)
    prefix = model_path(card.version, f"evaluations/{name}")
    write_predictions(storage, f"{prefix}/{PREDICTIONS}", tax, [p["product_id"] for p in products],
                      targets, mask, scored.scores, decisions)
    report = write_evaluation_report(storage, prefix, f"Evaluation {name}", intro, evaluated)
    summary = {k: metrics[k] for k in ("micro_f1", "macro_f1", "mAP", "hamming_loss")}
    summary.update(
        model_version=card.version, products=len(products), rejected=ingested.rejected,
        report=report, predictions=storage.url(f"{prefix}/{PREDICTIONS}"),
        per_attribute={a: {k: v for k, v in am.items()
                           if k in ("accuracy", "coverage", "top1_accuracy", "macro_f1", "known")}
                       for a, am in metrics["per_attribute"].items()},
        calibration=metrics["calibration"], review=metrics.get("review"),
    )
    return summary


def write_predictions(storage, path: str, tax: Taxonomy, product_ids: list[str], targets, mask, scores,
                      decisions, products_per_part: int = 20_000) -> None:
    """EVALUATION_PREDICTIONS of an evaluation to `path`, atomically, built a part of the
    products at a time: one row per product and value, so 100k products of a 500-value
    taxonomy are 50M rows, which are never held at once."""
    with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        local = Path(tmp) / PREDICTIONS
        with RowGroupWriter(local, EVALUATION_PREDICTIONS) as out:
            for start in range(0, len(product_ids), products_per_part):
                part = slice(start, start + products_per_part)
                out.write(prediction_table(tax, product_ids[part], targets[part], mask[part], scores[part],
                                           decisions[part]))
        storage.upload(local, path)
    log.info("wrote %d rows to %s", out.rows, storage.url(path))


def compare_evaluations(lake: str, name: str, versions: list[str], *, resamples: int | None = None) -> dict:
    """The paired bootstrap (tagger.quality.compare) of two or more model versions evaluated
    on one export under the same evaluation `name`: each version's mean accuracy and
    macro-F1 with a 95% interval, and the first version's lead over each of the others."""
    from tagger.io.parquet import read_table
    from tagger.model.versions import read_card
    from tagger.quality.compare import RESAMPLES, compare_predictions

    if len(versions) < 2:
        raise ValueError("compare needs two model versions or more (tagger models lists them)")
    storage = open_storage(lake)
    tables, taxonomy = {}, None
    for version in versions:
        card = read_card(storage, version)
        path = model_path(version, f"{EVALUATIONS}/{name}/{PREDICTIONS}")
        if not storage.exists(path):
            raise FileNotFoundError(
                f"Model {version} has no evaluation {name!r} with predictions at {storage.url(path)}. "
                f"Evaluate it on the same export: tagger evaluate EXPORT --lake {lake} --model "
                f"{version} --name {name}")
        if taxonomy is not None and card.taxonomy.outputs != taxonomy.outputs:
            raise ValueError(f"Model {version} has another taxonomy than {versions[0]}: "
                             "compare versions of one taxonomy")
        taxonomy = taxonomy or card.taxonomy
        tables[version] = read_table(storage, path, EVALUATION_PREDICTIONS)
    if len(tables) < len(versions):
        raise ValueError(f"{versions} name one version twice: compare two different versions")
    reference = next(iter(tables))
    return dict(compare_predictions(tables, taxonomy, reference, resamples=resamples or RESAMPLES),
                evaluation=name)


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
