"""Predicted tags -> tag tables: `tags/history/run_date=.../<run_id>.parquet` + `tags/latest/`.

A product is tagged when it is new, its image or curated labels changed since it was last
tagged, or the model changed (all with `full`). Curated labels always win: for an
attribute the catalog labels, the tag rows are the curated values (source='curated'),
never predictions. `tags/state/tagged.parquet` remembers what each product was tagged
from, so products where every attribute abstained are not re-tagged every night.

Order of writes: history, then latest, then state. A crash in between leaves the previous
latest readable, and the re-run (same run id) replaces its own history file.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog_schemas.tables import TAG_HISTORY, TAG_LATEST
from catalog_schemas.taxonomy import Taxonomy
from tagger.config import TagConfig
from tagger.data import ProductImages, create_transforms, order_by_shard
from tagger.ingest import read_products
from tagger.calibration import apply_temperature
from tagger.evaluate import auto_threshold_vector, card_temperatures
from tagger.model import resolve_device
from tagger.predict import create_loader
from tagger.runtime import predict_with_runtime
from tagger.lock import locked
from tagger.registry import load_model, read_card
from tagger.storage import Storage, open_storage, read_table_or_empty, write_table
from tagger.taxonomy import applicable_mask, encode_labels, single_slices
from tagger.thresholds import compute_decisions, review_flags

log = logging.getLogger(__name__)

HISTORY_PREFIX = "tags/history"
LATEST_PATH = "tags/latest/tags.parquet"
STATE_PATH = "tags/state/tagged.parquet"
TAG_ORDER = [("product_id", "ascending"), ("attribute", "ascending"), ("value", "ascending")]
STATE = pa.schema([
    ("product_id", pa.string()), ("image_hash", pa.string()),
    ("product_updated_at", pa.timestamp("us", tz="UTC")), ("model_version", pa.string()),
    ("run_id", pa.string()),
])


@dataclass
class TagResult:
    run_id: str
    run_date: str
    model_version: str
    lake: str
    products: int = 0
    tagged: int = 0
    skipped: int = 0
    removed: int = 0
    history_rows: int = 0
    latest_rows: int = 0
    tags_per_attribute: dict[str, int] = field(default_factory=dict)
    changes: dict = field(default_factory=dict)  # compute_tag_changes(previous latest, latest)
    history_path: str = ""
    latest_path: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def select_products(products: list[dict], state: dict[str, dict], model_version: str, full: bool) -> list[int]:
    """Indices of products to tag: new, changed image or labels, or a different model."""
    out = []
    for i, p in enumerate(products):
        s = state.get(p["product_id"])
        if (full or s is None or s["model_version"] != model_version
                or s["image_hash"] != p["image_hash"] or s["product_updated_at"] != p["updated_at"]):
            out.append(i)
    return out


ROW_COLUMNS = TAG_HISTORY.names[:TAG_HISTORY.names.index("needs_review") + 1]  # from scoring


def compute_tag_rows(taxonomy: Taxonomy, products: list[dict], scores: np.ndarray,
                     thresholds: np.ndarray, auto_thresholds: np.ndarray | None = None) -> dict[str, list]:
    """Column lists (ROW_COLUMNS) of tag rows: curated values where the catalog labels an
    attribute, else the model's decisions for attributes that apply to the product's
    category; a decision below its auto-publish threshold needs review."""
    categories = [p["category"] for p in products]
    targets, curated = encode_labels(taxonomy, [dict(p["labels"]) for p in products], categories)
    decisions = compute_decisions(scores, thresholds, list(single_slices(taxonomy).values()))
    predicted = decisions & applicable_mask(taxonomy, categories) & ~curated
    emitted = predicted | (curated & (targets > 0))
    rows, cols = np.nonzero(emitted)
    outputs = taxonomy.outputs
    from_model = predicted[rows, cols]
    review = review_flags(scores, predicted, auto_thresholds)[rows, cols]
    return dict(
        product_id=[products[r]["product_id"] for r in rows],
        attribute=[outputs[c][0] for c in cols],
        value=[outputs[c][1] for c in cols],
        score=[float(scores[r, c]) if m else None for r, c, m in zip(rows, cols, from_model)],
        source=["model" if m else "curated" for m in from_model],
        image_hash=[products[r]["image_hash"] for r in rows],
        needs_review=review.tolist(),
    )


def _thresholds_vector(taxonomy: Taxonomy, card: dict) -> np.ndarray:
    try:
        return np.array([card["thresholds"][a][v] for a, v in taxonomy.outputs], dtype=np.float32)
    except KeyError as e:
        raise ValueError(f"Model {card['version']} card has no threshold for {e}: corrupt card?") from None


@dataclass
class TagPlan:
    """What a tag run will do: the model version and the products to tag (catalog order).
    Shards of `product_ids` can be scored anywhere (score_products); write_tags commits."""

    model_version: str
    product_ids: list[str]
    products: int


def plan_tagging(lake: str, *, model_version: str | None = None, full: bool = False,
                 products: list[dict] | None = None) -> TagPlan:
    """The products that are new or changed since they were tagged (all with `full` or a
    different model), for the given model version (default: the newest). `products`: the
    products table as rows, when the caller has read it already."""
    storage = open_storage(lake)
    version = read_card(storage, model_version)["version"]
    products = products if products is not None else read_products(storage).to_pylist()
    state = {s["product_id"]: s for s in read_table_or_empty(storage, STATE_PATH, STATE).to_pylist()}
    todo = select_products(products, state, version, full)
    log.info("plan: %d of %d products to tag with model %s", len(todo), len(products), version)
    return TagPlan(version, [products[i]["product_id"] for i in todo], len(products))


def score_products(lake: str, model_version: str, product_ids: list[str],
                   config: TagConfig | None = None, products: list[dict] | None = None) -> dict[str, list]:
    """Tag rows (compute_tag_rows columns) for these products. Reads only: one shard of a
    run, in any process or machine that can read the lake."""
    config = config or TagConfig()
    storage = open_storage(lake)
    model, card = load_model(storage, model_version)
    taxonomy = Taxonomy.model_validate(card["taxonomy"])
    thresholds = _thresholds_vector(taxonomy, card)
    auto_thresholds, temperature = auto_threshold_vector(taxonomy, card), card_temperatures(taxonomy, card)
    wanted = set(product_ids)
    products = products if products is not None else read_products(storage).to_pylist()
    todo = [p for p in products if p["product_id"] in wanted]
    device = resolve_device(config.device)
    dcfg = card["data_config"]
    transform = create_transforms(dcfg["image_size"], dcfg["mean"], dcfg["std"], train=False)
    rows: dict[str, list] = {k: [] for k in ROW_COLUMNS}
    for start in range(0, len(todo), config.chunk_size):
        chunk = todo[start:start + config.chunk_size]
        chunk = [chunk[i] for i in order_by_shard([p["image_shard"] for p in chunk])]
        ds = ProductImages(lake, [p["image_shard"] for p in chunk], [p["image_hash"] for p in chunk],
                           transform)
        loader = create_loader(ds, config.batch_size, config.workers, device=device)
        logits = predict_with_runtime(model, loader, device, runtime=config.runtime,
                                      precision=config.precision,
                                      desc=f"tag {start + len(chunk)}/{len(todo)}", logits=True)
        scores = apply_temperature(logits, temperature)
        for k, v in compute_tag_rows(taxonomy, chunk, scores, thresholds, auto_thresholds).items():
            rows[k].extend(v)
    return rows


@locked("tags")  # one tag run per lake at a time (tagger/lock.py)
def tag_catalog(
    lake: str,
    *,
    model_version: str | None = None,
    full: bool = False,
    run_id: str | None = None,
    run_date: date | None = None,
    config: TagConfig | None = None,
) -> TagResult:
    """Tag new and changed products (all with `full` or a new model) and write the tables."""
    t0 = time.perf_counter()
    storage = open_storage(lake)
    version = read_card(storage, model_version)["version"]  # a missing model is the first error
    products = read_products(storage).to_pylist()  # read once, for all three steps
    plan = plan_tagging(lake, model_version=version, full=full, products=products)
    rows = score_products(lake, plan.model_version, plan.product_ids, config, products)
    return _write_tags(lake, plan, [rows], full=full, run_id=run_id, run_date=run_date,
                       config=config, t0=t0, products=products)


@locked("tags")
def write_tags(lake: str, plan: TagPlan, rows: list[dict[str, list]], *, full: bool = False,
               run_id: str | None = None, run_date: date | None = None,
               config: TagConfig | None = None) -> TagResult:
    """Commit the tag rows of a planned run (from one or many score_products shards)."""
    return _write_tags(lake, plan, rows, full=full, run_id=run_id, run_date=run_date,
                       config=config, t0=time.perf_counter(), products=None)


def _write_tags(lake, plan, chunks, *, full, run_id, run_date, config, t0, products) -> TagResult:
    config = config or TagConfig()
    storage = open_storage(lake)
    now = datetime.now(timezone.utc)
    run_date = run_date or now.date()
    run_id = run_id or f"tag-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    version = plan.model_version
    result = TagResult(run_id, run_date.isoformat(), version, storage.uri)
    products = products if products is not None else read_products(storage).to_pylist()
    state = {s["product_id"]: s for s in read_table_or_empty(storage, STATE_PATH, STATE).to_pylist()}
    planned = set(plan.product_ids)
    tagged = [p for p in products if p["product_id"] in planned]
    result.products, result.tagged = len(products), len(tagged)
    result.skipped = len(products) - len(tagged)
    log.info("tag %s with model %s: %d of %d products tagged", run_id, version, len(tagged),
             len(products))

    meta = {"run_id": run_id, "model_version": version, "config": config.model_dump_json()}
    new = _as_table(chunks, version, run_id, now, meta)
    result.history_rows = new.num_rows
    if new.num_rows or full:  # a night with nothing to tag leaves no empty file behind
        result.history_path = _write_history(storage, new, run_id, run_date)

    tagged_ids = pa.array([p["product_id"] for p in tagged], pa.string())
    current_ids = pa.array([p["product_id"] for p in products], pa.string())
    previous = read_latest(storage)
    keep = pc.and_(pc.invert(pc.is_in(previous["product_id"], tagged_ids)),
                   pc.is_in(previous["product_id"], current_ids))
    latest = pa.concat_tables([previous.filter(keep), new.cast(TAG_LATEST)])
    latest = latest.sort_by(TAG_ORDER)
    if tagged or latest.num_rows != previous.num_rows:
        write_table(storage, LATEST_PATH, latest.replace_schema_metadata({**TAG_LATEST.metadata, **meta}))
    result.removed = len({*previous["product_id"].to_pylist()} - {*current_ids.to_pylist()})
    result.latest_rows, result.latest_path = latest.num_rows, storage.url(LATEST_PATH)
    for a in latest["attribute"].to_pylist():
        result.tags_per_attribute[a] = result.tags_per_attribute.get(a, 0) + 1
    result.changes = compute_tag_changes(previous, latest)

    if tagged or result.removed:
        _write_state(storage, state, tagged, products, version, run_id)
    result.seconds = round(time.perf_counter() - t0, 3)
    log.info("tag %s: %d products tagged, %d history rows, %d latest rows in %.1fs", run_id,
             result.tagged, result.history_rows, result.latest_rows, result.seconds)
    return result


def compute_tag_changes(previous: pa.Table, latest: pa.Table) -> dict:
    """What changed between two tag snapshots. A tag is (product_id, attribute, value);
    `changed` counts (product, attribute) pairs whose values differ on both sides (e.g.
    colour red -> blue), `products_changed` the products with any added or removed tag.
    Scores are not compared: a tag that stays is no change."""
    def tags(t: pa.Table) -> set[tuple[str, str, str]]:
        return set(zip(*(t[c].to_pylist() for c in ("product_id", "attribute", "value"))))

    old, new = tags(previous), tags(latest)
    added, removed = new - old, old - new
    per_attribute: dict[str, dict[str, int]] = {}
    for kind, rows in (("added", added), ("removed", removed)):
        for _, attribute, _ in rows:
            counts = per_attribute.setdefault(attribute, {"added": 0, "removed": 0})
            counts[kind] += 1
    changed = {(p, a) for p, a, _ in added} & {(p, a) for p, a, _ in removed}
    return dict(added=len(added), removed=len(removed), changed=len(changed),
                products_changed=len({p for p, _, _ in added | removed}),
                per_attribute=dict(sorted(per_attribute.items())))


def _as_table(chunks, model_version, run_id, now, meta) -> pa.Table:
    cols = {k: [v for c in chunks for v in c[k]] for k in ROW_COLUMNS}
    n = len(cols["product_id"])
    cols.update(model_version=[model_version] * n, run_id=[run_id] * n, tagged_at=[now] * n)
    table = pa.table({name: cols[name] for name in TAG_HISTORY.names}, schema=TAG_HISTORY)
    # Rows in one order whatever the sharding: product, attribute, value.
    return table.sort_by(TAG_ORDER).replace_schema_metadata({**TAG_HISTORY.metadata, **meta})


def _write_history(storage: Storage, table: pa.Table, run_id: str, run_date: date) -> str:
    """One file per run; a re-run of the same run id replaces it (in any partition)."""
    path = f"{HISTORY_PREFIX}/run_date={run_date.isoformat()}/{run_id}.parquet"
    for old in storage.list(HISTORY_PREFIX):
        if old.endswith(f"/{run_id}.parquet") and old != path:
            storage.delete(old)
    write_table(storage, path, table)
    return storage.url(path)


def _write_state(storage, state, tagged, products, model_version, run_id) -> None:
    for p in tagged:
        state[p["product_id"]] = dict(product_id=p["product_id"], image_hash=p["image_hash"],
                                      product_updated_at=p["updated_at"],
                                      model_version=model_version, run_id=run_id)
    current = {p["product_id"] for p in products}
    rows = [state[k] for k in sorted(state) if k in current]
    write_table(storage, STATE_PATH, pa.Table.from_pylist(rows, schema=STATE))


def read_latest(storage: Storage) -> pa.Table:
    # Tables written before needs_review existed: every tag was published.
    return read_table_or_empty(storage, LATEST_PATH, TAG_LATEST, defaults={"needs_review": False})

