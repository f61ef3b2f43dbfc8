"""Arrow schemas of every table in the lake, each column with a description.

These are the contract with readers (DuckDB, Trino, Athena, Spark, pandas): a column is
added here first, with its description, and never renamed in place.
"""

from __future__ import annotations

import pyarrow as pa

UTC_TS = pa.timestamp("us", tz="UTC")

# One more image of a product (back, detail, ...): the same four facts as the products
# table's own image_* columns, which hold the product's first good image.
IMAGE_REF = pa.struct([
    pa.field("image_uri", pa.string(), nullable=False),
    pa.field("image_version", pa.string()),
    pa.field("image_hash", pa.string(), nullable=False),
    pa.field("image_shard", pa.string(), nullable=False),
])


def _schema(name: str, description: str, *columns: tuple[str, pa.DataType, bool, str]) -> pa.Schema:
    fields = [
        pa.field(col, typ, nullable=nullable, metadata={"description": desc})
        for col, typ, nullable, desc in columns
    ]
    return pa.schema(fields, metadata={"table": name, "description": description})


PRODUCTS = _schema(
    "products",
    "One row per product of the latest catalog export that could be ingested.",
    ("product_id", pa.string(), False, "Product id from the catalog export."),
    ("category", pa.string(), True, "Product category; decides which attributes apply."),
    ("image_uri", pa.string(), False, "Where the original image was read from (resolved URI)."),
    ("image_version", pa.string(), True,
     "Cheap change key of the source image (size+mtime locally, ETag on S3)."),
    ("image_hash", pa.string(), False, "sha256 of the original image bytes; key into the shards."),
    ("image_shard", pa.string(), False, "File under catalog/images/ that holds the image."),
    ("labels", pa.map_(pa.string(), pa.list_(pa.string())), False,
     "Curated labels: attribute -> values. A missing attribute means unknown (masked)."),
    ("first_seen", UTC_TS, False, "When the product first appeared in an ingest."),
    ("updated_at", UTC_TS, False, "When the row (category, image, labels or text) last changed."),
    ("ingest_run_id", pa.string(), False, "Ingest run that last changed the row."),
    ("text", pa.string(), True,
     "The product's text from the taxonomy's catalog.text columns (title, description), "
     "cleaned: NFC, no control characters, single spaces, at most 2000 characters. Null when "
     "it has none or nothing is mapped; tables written before this column read as null."),
    ("more_images", pa.list_(IMAGE_REF), True,
     "The product's other good images (image_uri, image_version, image_hash, image_shard "
     "each), in the order the catalog mapping lists them, after the one in image_*. Null "
     "when it has one image; tables written before this column read as null."),
    ("row_digest", pa.int64(), True,
     "Digest of the export cells the mapping reads (and of the taxonomy, catalog folder and "
     "image roots): a re-ingest takes a row whose digest and image versions are unchanged as "
     "it was, without validating it again. Null when the row is validated every run (an image "
     "left out, text cut, an image reached through a link) and in tables written before it."),
)

IMAGES = _schema(
    "images",
    "Image shards: normalised images (resized once, re-encoded JPEG), keyed by content hash.",
    ("image_hash", pa.string(), False, "sha256 of the original image bytes."),
    ("width", pa.int32(), False, "Width of the stored image in pixels."),
    ("height", pa.int32(), False, "Height of the stored image in pixels."),
    ("data", pa.binary(), False, "JPEG bytes of the stored image (RGB, upright)."),
)

REJECTS = _schema(
    "rejects",
    "Catalog rows that could not be ingested, with the stage and reason.",
    ("run_id", pa.string(), False, "Ingest run that rejected the row."),
    ("rejected_at", UTC_TS, False, "When the row was rejected."),
    ("source", pa.string(), False, "Catalog export the row came from."),
    ("row_number", pa.int64(), False, "0-based position of the row in the export."),
    ("product_id", pa.string(), True, "Product id, where the row had one."),
    ("stage", pa.string(), False, "validate | fetch | decode."),
    ("reason", pa.string(), False, "Short machine-readable reason, e.g. missing_file."),
    ("detail", pa.string(), False, "Human-readable detail: what was wrong and how to fix it."),
    ("product_kept", pa.bool_(), True,
     "True when only this image was left out: the product has other good images and was "
     "ingested with them. False (or null in tables written before this column): the row "
     "was not ingested."),
)

_TAG_COLUMNS = (
    ("product_id", pa.string(), False, "Product id."),
    ("attribute", pa.string(), False, "Attribute name, as in the taxonomy."),
    ("value", pa.string(), False, "Attribute value, as in the taxonomy."),
    ("score", pa.float32(), True, "Model score in [0, 1]; null for curated labels."),
    ("source", pa.string(), False,
     "model: predicted; curated: the catalog's own label; reviewed: a reviewer's decision "
     "(catalog/corrections), which predictions never overwrite."),
    ("image_hash", pa.string(), False, "Image the tag was computed from."),
    ("needs_review", pa.bool_(), False,
     "True: the score is below the value's auto-publish threshold (models trained with a "
     "precision target): route the tag to a person. False for auto-published and curated tags."),
    ("model_version", pa.string(), False, "Model version that ran (also for curated rows)."),
    ("run_id", pa.string(), False, "Tag run that produced the row."),
    ("tagged_at", UTC_TS, False, "When the row was produced."),
)

TAG_HISTORY = _schema(
    "tag_history",
    "Every tag a run produced, append-only; partitioned by run_date=YYYY-MM-DD.",
    *_TAG_COLUMNS,
)

TAG_LATEST = _schema(
    "tag_latest",
    "One current row per product and emitted attribute value, replaced atomically.",
    *_TAG_COLUMNS,
)

TAG_STATE = _schema(
    "tag_state",
    "What each current product was last tagged from, one row per product, replaced by every "
    "run that tags or removes products. A run tags a product again only when its image, its "
    "row or the model differs from its row here, so products where every attribute abstained "
    "(no tag rows at all) are not re-tagged every night.",
    ("product_id", pa.string(), False, "Product id; the rows are sorted by it."),
    ("image_hash", pa.string(), False, "image_hash of the product row that was tagged."),
    ("product_updated_at", UTC_TS, False, "updated_at of the product row that was tagged."),
    ("model_version", pa.string(), False, "Model version that tagged the product."),
    ("run_id", pa.string(), False, "Tag run that last tagged the product."),
)

CORRECTIONS = _schema(
    "corrections",
    "Reviewers' decisions from the review tool (tagger review pull): curated labels, one row "
    "per product and attribute, the latest decision. A correction wins over the export's own "
    "label unless the product's row changed (new labels or a new image) after the review.",
    ("product_id", pa.string(), False, "Product id."),
    ("attribute", pa.string(), False, "Attribute name, as in the taxonomy."),
    ("values", pa.list_(pa.string()), False,
     "The values the reviewer chose (taxonomy names; [] for a multi attribute: none of them)."),
    ("shown", pa.list_(pa.string()), False,
     "The values the reviewer was shown as the proposal (the model's tags or the curated label)."),
    ("shown_scores", pa.list_(pa.float32()), False,
     "Model score of each shown value, in the order of `shown` (NaN where it was a curated label)."),
    ("model_version", pa.string(), True, "Model version whose tags were shown; null if none."),
    ("reviewer", pa.string(), False, "Who decided (the review tool's user e-mail or id)."),
    ("reviewed_at", UTC_TS, False, "When the decision was last changed in the review tool."),
    ("task", pa.string(), False, "Review tool task id (Label Studio: project/task)."),
    ("reason", pa.string(), False,
     "Why the product was sent: needs_review, sample (auto-published), label_issue."),
    ("pull_run_id", pa.string(), False, "Pull run that wrote the row."),
)

LABEL_ISSUES = _schema(
    "label_issues",
    "Curated labels that are probably wrong (cleanlab on out-of-sample model scores), "
    "replaced by every tagger label-issues run; the lowest score first.",
    ("product_id", pa.string(), False, "Product id."),
    ("attribute", pa.string(), False, "Attribute name, as in the taxonomy."),
    ("given", pa.list_(pa.string()), False, "The curated label as the catalog (or a correction) has it."),
    ("suggested", pa.list_(pa.string()), False,
     "What the model's out-of-sample scores suggest instead (single: the top value; multi: "
     "the values over their decision threshold)."),
    ("score", pa.float32(), False,
     "cleanlab label quality in [0, 1]: the lower, the likelier the given label is wrong."),
    ("split", pa.string(), False,
     "Held-out split of the model the scores come from (validation or test): never trained on."),
    ("model_version", pa.string(), False, "Model version that scored the product."),
    ("run_id", pa.string(), False, "label-issues run that found the row."),
    ("found_at", UTC_TS, False, "When the run found it."),
)

EVALUATION_PREDICTIONS = _schema(
    "evaluation_predictions",
    "One row per product of an evaluation export and attribute value whose label is known "
    "(models/<version>/evaluations/<name>/predictions.parquet): the label beside the model's "
    "score and decision, for error analysis and for comparing two models on the same products.",
    ("product_id", pa.string(), False, "Product id from the evaluation export."),
    ("attribute", pa.string(), False, "Attribute name, as in the taxonomy."),
    ("value", pa.string(), False, "Attribute value, as in the taxonomy."),
    ("label", pa.bool_(), False, "True where the value is one of the product's curated labels."),
    ("decided", pa.bool_(), False,
     "True where the model tags the product with the value: over its decision threshold "
     "(multi), or the one choice of a single attribute (no row of a single attribute true "
     "when it abstains)."),
    ("score", pa.float32(), False, "The model's calibrated score of the value, in [0, 1]."),
)
