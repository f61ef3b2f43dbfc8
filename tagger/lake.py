"""Where everything lives under a lake root, and the readers of its tables.

One root URI (a local folder or `s3://bucket/prefix`, see tagger.io.storage) holds:

| path                                     | what                                  | written by  |
|------------------------------------------|---------------------------------------|-------------|
| catalog/products/products.parquet        | one row per product (PRODUCTS)        | ingest      |
| catalog/images/shard-*.parquet           | normalised images by hash (IMAGES)    | ingest      |
| catalog/rejects/rejects.parquet          | the latest run's rejected rows        | ingest      |
| catalog/rejects/run_date=YYYY-MM-DD/<run>.parquet | every run's rejects, append-only | ingest     |
| catalog/taxonomy.json                    | the taxonomy of the last ingest       | ingest      |
| catalog/corrections/corrections.parquet  | reviewers' decisions (CORRECTIONS)    | review pull |
| catalog/label_issues/issues.parquet      | probably wrong labels (LABEL_ISSUES)  | label-issues |
| models/<version>/card.json, model.safetensors, report.md | model versions        | train       |
| models/production.json                                 | production pointer    | promote, train (gate) |
| models/production-history/<seq>.json                   | one file per promotion | promote, train (gate) |
| checkpoints/<key>/last.ckpt              | the last epoch of a running training  | train       |
| evaluations/<name>/                      | an evaluation export's own ingest     | evaluate    |
| models/<version>/evaluations/<name>/predictions.parquet | scores and decisions beside the labels (EVALUATION_PREDICTIONS) | evaluate |
| tags/history/run_date=YYYY-MM-DD/<run>.parquet | every tag of every run          | tag         |
| tags/latest/tags.parquet                 | one current row per product and tag   | tag         |
| tags/state/tagged.parquet                | what each product was tagged from     | tag         |
| .locks/                                  | one writer per table group            | tagger.io.lock |
| .staging/ingest/<run>/                   | a fanned-out ingest's fetched images, until its shards are written | ingest (sharded) |

The table schemas are declared in catalog_schemas.tables; the layout never changes in
place, so a lake written by an earlier version opens with this one (tests/test_old_lake.py).
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.compute as pc

from pydantic import ValidationError

from catalog_schemas.tables import PRODUCTS, TAG_LATEST
from catalog_schemas.taxonomy import Taxonomy
from tagger.io.parquet import corrupt_table, register_remedy
from tagger.io.storage import Storage, read_table, read_table_or_empty

log = logging.getLogger(__name__)

PRODUCTS_PATH = "catalog/products/products.parquet"
REJECTS_PATH = "catalog/rejects/rejects.parquet"
TAXONOMY_PATH = "catalog/taxonomy.json"
IMAGES_PREFIX = "catalog/images"
MODELS = "models"
CARD = "card.json"
WEIGHTS = "model.safetensors"
CHECKPOINTS = "checkpoints"
EVALUATIONS = "evaluations"
HISTORY_PREFIX = "tags/history"
LATEST_PATH = "tags/latest/tags.parquet"
STATE_PATH = "tags/state/tagged.parquet"
REJECTS_PREFIX = "catalog/rejects"
CORRECTIONS_PATH = "catalog/corrections/corrections.parquet"
LABEL_ISSUES_PATH = "catalog/label_issues/issues.parquet"
RELEASED_PATH = "catalog/images/.released.json"  # when each unreferenced shard was let go
# Images a fanned-out ingest's workers fetched, until the shards are written (hidden: no
# table listing or reader sees them; the run deletes its own).
STAGING_PREFIX = ".staging/ingest"

# What an operator runs when a lake file is damaged (named in every CorruptTable).
REBUILD_CATALOG = ("Rebuild the catalog tables from the export and the stored image shards: "
                   "tagger ingest CATALOG --taxonomy FILE --lake {lake} --rebuild "
                   "(docs/operations.md#a-damaged-table).")
register_remedy("catalog/", REBUILD_CATALOG)
register_remedy("catalog/corrections/", "Restore it from a backup, or delete it and pull every "
                "decision again from the review tool: tagger review pull --lake {lake} "
                "(docs/review.md).")
register_remedy("catalog/label_issues/", "Delete it and find them again: tagger label-issues "
                "--lake {lake} (docs/review.md).")
register_remedy("tags/", "Delete it and re-tag every product: tagger tag --lake {lake} --full "
                "(docs/operations.md#a-damaged-table).")
register_remedy(HISTORY_PREFIX + "/", "Delete it: that run's rows leave the history, tags/latest "
                "keeps every current tag (docs/operations.md#a-damaged-table).")


def image_shard_path(shard: str) -> str:
    return f"{IMAGES_PREFIX}/{shard}"


def staging_path(run_id: str, part: str) -> str:
    return f"{STAGING_PREFIX}/{run_id}/{part}.parquet"


def model_path(version: str, name: str = "") -> str:
    """models/<version>[/name]."""
    return f"{MODELS}/{version}/{name}" if name else f"{MODELS}/{version}"


def checkpoint_path(key: str) -> str:
    return f"{CHECKPOINTS}/{key}/last.ckpt"


def history_path(run_date: str, run_id: str) -> str:
    return f"{HISTORY_PREFIX}/run_date={run_date}/{run_id}.parquet"


# Products columns that tables written by older versions lack, and what they read as: a
# table is not rewritten to add them (a re-ingest that changes nothing writes nothing).
PRODUCTS_DEFAULTS = {"text": None, "more_images": None, "row_digest": None}
REJECTS_DEFAULTS = {"product_kept": False}  # before several images: every reject dropped its row


def read_products(storage: Storage) -> pa.Table:
    """The products table, or a FileNotFoundError that says how to ingest."""
    if not storage.exists(PRODUCTS_PATH):
        raise FileNotFoundError(
            f"No products in {storage.url(PRODUCTS_PATH)}. Ingest a catalog first: "
            f"tagger ingest CATALOG --taxonomy FILE --lake {storage.uri}"
        )
    return read_table(storage, PRODUCTS_PATH, PRODUCTS, defaults=PRODUCTS_DEFAULTS)


def named_shards(products: pa.Table) -> set[str]:
    """The image shards a products table (or a batch of its rows) names: each product's
    image_shard and those of its more_images. What vacuum keeps and ingest notes as in use."""
    more = pc.list_flatten(products["more_images"])
    return set(pc.unique(products["image_shard"]).to_pylist()) | set(
        pc.unique(pc.struct_field(more, "image_shard")).to_pylist())


def read_lake_taxonomy(storage: Storage) -> Taxonomy:
    """The taxonomy the catalog was last ingested with (what training reads)."""
    try:
        return Taxonomy.model_validate_json(storage.read_bytes(TAXONOMY_PATH))
    except ValidationError as e:
        raise corrupt_table(storage, TAXONOMY_PATH, e) from None


def rejects_history_path(run_date: str, run_id: str) -> str:
    """catalog/rejects/run_date=YYYY-MM-DD/<run_id>.parquet: one ingest run's rejects."""
    return f"{REJECTS_PREFIX}/run_date={run_date}/{run_id}.parquet"


def read_latest(storage: Storage) -> pa.Table:
    """The latest tag snapshot (empty before the first tag run)."""
    # Tables written before needs_review existed: every tag was published.
    return read_table_or_empty(storage, LATEST_PATH, TAG_LATEST, defaults={"needs_review": False})


def read_released(storage: Storage) -> dict[str, str]:
    """shard name -> when the products table stopped naming it (ISO time), from
    RELEASED_PATH; {} when there is none or it cannot be read (vacuum then waits longer)."""
    try:
        found = json.loads(storage.read_bytes(RELEASED_PATH))
    except FileNotFoundError:
        return {}
    except ValueError as e:
        log.warning("%s cannot be read (%s): treated as empty", storage.url(RELEASED_PATH), e)
        return {}
    return found if isinstance(found, dict) else {}
