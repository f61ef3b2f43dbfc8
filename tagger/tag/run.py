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

import io
import logging
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog_schemas.tables import PRODUCTS, TAG_HISTORY, TAG_LATEST
from catalog_schemas.taxonomy import Taxonomy
from tagger.config import TagConfig
from tagger.data.dataset import ProductImages, order_by_shard
from tagger.data.transforms import BatchNormalize, create_transforms
from tagger.lake import PRODUCTS_PATH, read_products
from tagger.quality.calibration import apply_temperature
from tagger.model.device import resolve_device
from tagger.data.loader import create_loader
from tagger.model.runtime import predict_with_runtime
from tagger.io.lock import locked
from tagger.model.scoring import card_arrays
from tagger.model.versions import load_model, read_card
from tagger.io.storage import (
    PARQUET_OPTIONS,
    ROW_GROUP_ROWS,
    Storage,
    open_storage,
    read_table_or_empty,
    write_table,
)
from tagger.labels import applicable_mask, encode_labels, single_slices
from tagger.quality.thresholds import compute_decisions, review_flags
from tagger.lake import HISTORY_PREFIX, LATEST_PATH, STATE_PATH

log = logging.getLogger(__name__)

TAG_ORDER = [("product_id", "ascending"), ("attribute", "ascending"), ("value", "ascending")]
LATEST_BATCH_ROWS = 16_384  # rows of the latest table held at once while merging; its row groups
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


# The products columns a tag run uses. A run streams the products table (scan_products) and
# keeps only the rows it tags as an Arrow table; only a scoring chunk becomes Python rows
# (TagConfig.chunk_size).
PRODUCT_COLUMNS = ["product_id", "category", "image_hash", "image_shard", "labels", "updated_at"]
PRODUCT_SCHEMA = pa.schema([PRODUCTS.field(c) for c in PRODUCT_COLUMNS])


def read_tag_products(storage: Storage) -> pa.Table:
    """The products table, only PRODUCT_COLUMNS (catalog order: by product id)."""
    if not storage.exists(PRODUCTS_PATH):
        read_products(storage)  # raises the error that says how to ingest
    table = pq.read_table(io.BytesIO(storage.read_bytes(PRODUCTS_PATH)), columns=PRODUCT_COLUMNS)
    return table.cast(PRODUCT_SCHEMA)


def select_products(products: pa.Table, state: pa.Table, model_version: str, full: bool) -> np.ndarray:
    """Indices of products to tag: new, changed image or labels, or a different model
    (Arrow compute on the tables; `state` has the STATE columns)."""
    if full or state.num_rows == 0:
        return np.arange(products.num_rows)
    at = pc.index_in(products["product_id"], value_set=state["product_id"])
    s = state.select(["image_hash", "product_updated_at", "model_version"]).take(at)  # null: new
    same = pc.and_(pc.and_(pc.equal(s["model_version"], model_version),
                           pc.equal(s["image_hash"], products["image_hash"])),
                   pc.equal(s["product_updated_at"], products["updated_at"]))
    return np.flatnonzero(~pc.fill_null(same, False).to_numpy(zero_copy_only=False))


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


@dataclass
class TagPlan:
    """What a tag run will do: the model version and the products to tag (catalog order).
    Shards of `product_ids` can be scored anywhere (score_products); write_tags commits."""

    model_version: str
    product_ids: list[str]
    products: int


def plan_tagging(lake: str, *, model_version: str | None = None, full: bool = False) -> TagPlan:
    """The products that are new or changed since they were tagged (all with `full` or a
    different model), for the given model version (default: the newest)."""
    storage = open_storage(lake)
    version = read_card(storage, model_version).version
    scan = scan_products(storage, version, full=full)
    return TagPlan(version, scan.todo["product_id"].to_pylist(), scan.products)


SCAN_BATCH_ROWS = 16_384  # products and state rows a tag run reads at once (row groups: ROW_GROUP_ROWS)


class _Unsorted(Exception):
    """A table that should be sorted by product id is not (not written by us)."""


@dataclass
class _Scan:
    todo: pa.Table  # PRODUCT_COLUMNS of the products to tag, catalog order
    ids: pa.Array  # every current product id, sorted
    products: int


def scan_products(storage: Storage, version: str, *, full: bool = False,
                  wanted: list[str] | None = None) -> _Scan:
    """One pass over the products table, and the state table in step with it (both sorted
    by product id), keeping only the products to tag (select_products, or those in `wanted`)
    and the product ids: what a run holds grows with the products it tags, not with the
    catalog (issue 6). Tables not sorted by product id are read whole instead."""
    if not storage.exists(PRODUCTS_PATH):
        read_products(storage)  # raises the error that says how to ingest
    wanted_ids = None if wanted is None else pa.array(wanted, pa.string())
    try:
        with _parquet(storage, PRODUCTS_PATH) as pf, _parquet(storage, STATE_PATH) as sf:
            state = _Upto(_sorted_batches(sf, STATE))
            parts, ids, n = [], [], 0
            for batch in _sorted_batches(pf, PRODUCT_SCHEMA):
                n += batch.num_rows
                ids.append(batch["product_id"].combine_chunks())
                if wanted_ids is not None:
                    parts.append(batch.filter(pc.is_in(batch["product_id"], value_set=wanted_ids)))
                else:
                    seen = STATE.empty_table() if full else state.upto(batch["product_id"][-1].as_py())
                    parts.append(batch.take(select_products(batch, seen, version, full)))
            todo = pa.concat_tables(parts) if parts else PRODUCT_SCHEMA.empty_table()
            all_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    except _Unsorted:
        products = read_tag_products(storage)
        if wanted_ids is not None:
            todo = products.filter(pc.is_in(products["product_id"], value_set=wanted_ids))
        else:
            state = read_table_or_empty(storage, STATE_PATH, STATE)
            todo = products.take(select_products(products, state, version, full))
        all_ids, n = _sorted_unique(products["product_id"]), products.num_rows
    log.info("plan: %d of %d products to tag with model %s", todo.num_rows, n, version)
    return _Scan(todo, all_ids, n)


@contextmanager
def _parquet(storage: Storage, path: str) -> Iterator[pq.ParquetFile | None]:
    """A lake table as an open Parquet file (None when it does not exist yet)."""
    if not storage.exists(path):
        yield None
        return
    with storage.local_copy(path) as local, pq.ParquetFile(local) as f:
        yield f


def _sorted_batches(f: pq.ParquetFile | None, schema: pa.Schema) -> Iterator[pa.Table]:
    """`schema`'s columns of f in batches of SCAN_BATCH_ROWS rows; _Unsorted when the rows
    are not in product id order."""
    last = None
    for batch in f.iter_batches(batch_size=SCAN_BATCH_ROWS, columns=schema.names) if f is not None else ():
        if not batch.num_rows:
            continue
        t = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
        ids = t["product_id"]
        if (last is not None and ids[0].as_py() < last) or (
                len(ids) > 1 and pc.any(pc.less(ids[1:], ids[:-1])).as_py()):
            raise _Unsorted
        last = ids[-1].as_py()
        yield t


class _Upto:
    """Rows of sorted batches handed out in product id order: upto(pid) gives the rows not
    handed out yet whose product id is <= pid."""

    def __init__(self, batches: Iterator[pa.Table]):
        self._batches, self._buf, self._more = batches, STATE.empty_table(), True

    def upto(self, pid: str) -> pa.Table:
        while self._more and (not self._buf.num_rows or self._buf["product_id"][-1].as_py() <= pid):
            batch = next(self._batches, None)
            if batch is None:
                self._more = False
            else:
                self._buf = pa.concat_tables([self._buf, batch])
        k = _bisect(self._buf["product_id"], pid)
        out, self._buf = self._buf.slice(0, k), self._buf.slice(k)
        return out


def score_products(lake: str, model_version: str, product_ids: list[str],
                   config: TagConfig | None = None, products: pa.Table | None = None) -> dict[str, list]:
    """Tag rows (compute_tag_rows columns) for these products. Reads only: one shard of a
    run, in any process or machine that can read the lake. `products`: their rows
    (PRODUCT_COLUMNS), when the caller has them."""
    config = config or TagConfig()
    storage = open_storage(lake)
    model, card = load_model(storage, model_version)
    taxonomy, arrays = card.taxonomy, card_arrays(card)
    if products is None:
        products = scan_products(storage, model_version, wanted=product_ids).todo
    todo = products.filter(pc.is_in(products["product_id"], value_set=pa.array(product_ids, pa.string())))
    device = resolve_device(config.device)
    transform = create_transforms(card.data_config.image_size, train=False)
    normalize = BatchNormalize.from_config(card.data_config, reuse=True)
    rows: dict[str, list] = {k: [] for k in ROW_COLUMNS}
    for start in range(0, todo.num_rows, config.chunk_size):
        chunk = todo.slice(start, config.chunk_size).to_pylist()  # rows of one chunk only
        chunk = [chunk[i] for i in order_by_shard([p["image_shard"] for p in chunk])]
        ds = ProductImages(lake, [p["image_shard"] for p in chunk], [p["image_hash"] for p in chunk],
                           transform)
        loader = create_loader(ds, config.batch_size, config.workers, device=device)
        logits = predict_with_runtime(model, loader, device, runtime=config.runtime,
                                      precision=config.precision,
                                      desc=f"tag {start + len(chunk)}/{todo.num_rows}", logits=True,
                                      normalize=normalize)
        scores = apply_temperature(logits, arrays.temperature)
        for k, v in compute_tag_rows(taxonomy, chunk, scores, arrays.thresholds, arrays.auto_thresholds).items():
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
    version = read_card(storage, model_version).version  # a missing model is the first error
    scan = scan_products(storage, version, full=full)  # read once, for all three steps
    plan = TagPlan(version, scan.todo["product_id"].to_pylist(), scan.products)
    rows = score_products(lake, plan.model_version, plan.product_ids, config, scan.todo)
    return _write_tags(lake, plan, [rows], full=full, run_id=run_id, run_date=run_date,
                       config=config, t0=t0, scan=scan)


@locked("tags")
def write_tags(lake: str, plan: TagPlan, rows: list[dict[str, list]], *, full: bool = False,
               run_id: str | None = None, run_date: date | None = None,
               config: TagConfig | None = None) -> TagResult:
    """Commit the tag rows of a planned run (from one or many score_products shards)."""
    return _write_tags(lake, plan, rows, full=full, run_id=run_id, run_date=run_date,
                       config=config, t0=time.perf_counter(), scan=None)


def _write_tags(lake, plan, chunks, *, full, run_id, run_date, config, t0, scan) -> TagResult:
    config = config or TagConfig()
    storage = open_storage(lake)
    now = datetime.now(timezone.utc)
    run_date = run_date or now.date()
    run_id = run_id or f"tag-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    version = plan.model_version
    result = TagResult(run_id, run_date.isoformat(), version, storage.uri)
    scan = scan if scan is not None else scan_products(storage, version, wanted=plan.product_ids)
    current_ids, tagged = scan.ids, scan.todo
    tagged_ids = tagged["product_id"]
    result.products, result.tagged = scan.products, tagged.num_rows
    result.skipped = scan.products - tagged.num_rows
    log.info("tag %s with model %s: %d of %d products tagged", run_id, version, tagged.num_rows,
             scan.products)

    meta = {"run_id": run_id, "model_version": version, "config": config.model_dump_json()}
    new = _as_table(chunks, version, run_id, now, meta)
    result.history_rows = new.num_rows
    if new.num_rows or full:  # a night with nothing to tag leaves no empty file behind
        result.history_path = _write_history(storage, new, run_id, run_date)

    fresh = new.cast(TAG_LATEST).combine_chunks()
    with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        local = Path(tmp) / "latest.parquet"
        merged = _merge_latest(storage, fresh, tagged_ids, current_ids, local, meta)
        if tagged.num_rows or merged.rows != merged.previous_rows:
            storage.upload(local, LATEST_PATH)
            log.info("wrote %d rows to %s", merged.rows, storage.url(LATEST_PATH))
    result.removed = merged.removed
    result.latest_rows, result.latest_path = merged.rows, storage.url(LATEST_PATH)
    result.tags_per_attribute = merged.tags_per_attribute
    # Only tagged and removed products can change (the others' rows are copied as they
    # were), and their rows in the new latest table are exactly the new rows.
    result.changes = compute_tag_changes(merged.previous_affected, fresh)

    if tagged.num_rows or result.removed:
        _write_state(storage, tagged, current_ids, version, run_id)
    result.seconds = round(time.perf_counter() - t0, 3)
    log.info("tag %s: %d products tagged, %d history rows, %d latest rows in %.1fs", run_id,
             result.tagged, result.history_rows, result.latest_rows, result.seconds)
    return result


@dataclass
class _Merged:
    rows: int = 0
    previous_rows: int = 0
    removed: int = 0
    tags_per_attribute: dict[str, int] = field(default_factory=dict)
    previous_affected: pa.Table | None = None  # previous rows of re-tagged and removed products


def _batches(f: pq.ParquetFile | None) -> Iterator[pa.Table]:
    """The previous latest table in batches of LATEST_BATCH_ROWS rows, as TAG_LATEST tables."""
    for batch in f.iter_batches(batch_size=LATEST_BATCH_ROWS) if f is not None else ():
        t = pa.Table.from_batches([batch])
        if "needs_review" not in t.column_names:  # written before needs_review: all published
            t = t.append_column("needs_review", pa.repeat(pa.scalar(False), t.num_rows))
        yield t.select(TAG_LATEST.names).cast(TAG_LATEST)


def _bisect(ids: pa.Array, x: str, lo: int = 0, right: bool = True) -> int:
    """bisect.bisect_right (bisect_left with right=False) over a sorted Arrow string array."""
    hi = len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        v = ids[mid].as_py()
        if x < v or (not right and x == v):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _sorted_unique(values: pa.ChunkedArray) -> pa.Array:
    u = pc.unique(values)
    return u.take(pc.sort_indices(u))


def _member(pid: pa.ChunkedArray, sorted_set: pa.Array) -> pa.ChunkedArray:
    """pid in sorted_set, looking only at the slice of the set within pid's range when pid
    is sorted (the latest table is): O(batch + slice) per batch, not O(set)."""
    if len(pid) and pc.all(pc.less_equal(pid[:-1], pid[1:])).as_py() is not False:
        lo = _bisect(sorted_set, pid[0].as_py(), right=False)
        sorted_set = sorted_set.slice(lo, _bisect(sorted_set, pid[-1].as_py(), lo) - lo)
    return pc.is_in(pid, value_set=sorted_set)


def _merge_latest(storage: Storage, fresh: pa.Table, tagged_ids, current_ids, out: Path,
                  meta: dict) -> _Merged:
    """Write the new latest table to `out`: the previous one without the re-tagged products
    and those gone from the catalog, plus `fresh` (the run's rows, sorted by TAG_ORDER).

    Streams: the previous table is read LATEST_BATCH_ROWS rows at a time and merged in
    product id order with the fresh rows (both sorted), so what is held is a batch and the
    run's own rows, not the whole table. `current_ids`: every product id of the catalog,
    sorted (scan_products' ids)."""
    with _parquet(storage, LATEST_PATH) as previous:
        return _merge(previous, fresh, tagged_ids, current_ids, out, meta)


def _merge(previous: pq.ParquetFile | None, fresh, tagged_ids, current_ids, out, meta) -> _Merged:
    merged = _Merged()
    current = current_ids.combine_chunks() if isinstance(current_ids, pa.ChunkedArray) else current_ids
    tagged_ids = tagged_ids if isinstance(tagged_ids, pa.ChunkedArray) else pa.chunked_array([tagged_ids])
    retagged = _sorted_unique(tagged_ids)
    ids = fresh["product_id"].combine_chunks()
    done, dropped, gone_ids = 0, [], []
    schema = TAG_LATEST.with_metadata({**TAG_LATEST.metadata, **meta})
    with pq.ParquetWriter(out, schema, **PARQUET_OPTIONS) as writer:
        def emit(part: pa.Table) -> None:
            if part.num_rows:
                writer.write_table(part.replace_schema_metadata(schema.metadata),
                                   row_group_size=LATEST_BATCH_ROWS)
                merged.rows += part.num_rows
                for vc in pc.value_counts(part["attribute"]).to_pylist():
                    a = vc["values"]
                    merged.tags_per_attribute[a] = merged.tags_per_attribute.get(a, 0) + vc["counts"]

        for batch in _batches(previous):
            merged.previous_rows += batch.num_rows
            gone = pc.invert(_member(batch["product_id"], current))  # products no longer in the catalog
            gone_ids.append(pc.unique(batch["product_id"].filter(gone)))
            drop = pc.or_(gone, _member(batch["product_id"], retagged))
            dropped.append(batch.filter(drop))
            kept = batch.filter(pc.invert(drop))
            # fresh rows up to this batch's last product (ids never overlap with kept rows)
            upto = _bisect(ids, batch["product_id"][-1].as_py(), done) if batch.num_rows else done
            if upto > done:
                kept = pa.concat_tables([kept, fresh.slice(done, upto - done)]).sort_by(TAG_ORDER)
            done = upto
            emit(kept)
        emit(fresh.slice(done))
    merged.removed = pc.count_distinct(pa.chunked_array(gone_ids, pa.string())).as_py()
    merged.previous_affected = pa.concat_tables(dropped) if dropped else TAG_LATEST.empty_table()
    return merged


def compute_tag_changes(previous: pa.Table, latest: pa.Table) -> dict:
    """What changed between two tag snapshots. A tag is (product_id, attribute, value);
    `changed` counts (product, attribute) pairs whose values differ on both sides (e.g.
    colour red -> blue), `products_changed` the products with any added or removed tag.
    Scores are not compared: a tag that stays is no change. Arrow joins, no Python rows."""
    keys = ["product_id", "attribute", "value"]

    def tags(t: pa.Table) -> pa.Table:
        t = pa.table({k: t[k].cast(pa.string()) for k in keys})
        return t.group_by(keys, use_threads=False).aggregate([])  # distinct tags

    old, new = tags(previous), tags(latest)
    added = new.join(old, keys, join_type="left anti", use_threads=False)
    removed = old.join(new, keys, join_type="left anti", use_threads=False)
    pairs = ["product_id", "attribute"]
    changed = added.select(pairs).group_by(pairs, use_threads=False).aggregate([]).join(
        removed.select(pairs).group_by(pairs, use_threads=False).aggregate([]), pairs,
        join_type="inner", use_threads=False)
    products = pa.concat_arrays([added["product_id"].combine_chunks(),
                                 removed["product_id"].combine_chunks()])
    per_attribute: dict[str, dict[str, int]] = {}
    for kind, t in (("added", added), ("removed", removed)):
        for vc in pc.value_counts(t["attribute"]).to_pylist():
            counts = per_attribute.setdefault(vc["values"], {"added": 0, "removed": 0})
            counts[kind] += vc["counts"]
    return dict(added=added.num_rows, removed=removed.num_rows, changed=changed.num_rows,
                products_changed=pc.count_distinct(products).as_py(),
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


def _write_state(storage, tagged: pa.Table, current_ids: pa.Array, model_version, run_id) -> None:
    """What each current product was last tagged from: the tagged products' rows replace
    theirs, products gone from the catalog drop out. Streamed like the latest table: the
    previous state is read in batches and merged in product id order with the new rows."""
    n = tagged.num_rows
    new = pa.table([tagged["product_id"], tagged["image_hash"], tagged["updated_at"],
                    pa.repeat(pa.scalar(model_version, pa.string()), n),
                    pa.repeat(pa.scalar(run_id, pa.string()), n)], schema=STATE).sort_by("product_id")
    new_ids = new["product_id"].combine_chunks()
    drop = _sorted_unique(tagged["product_id"])
    with tempfile.TemporaryDirectory(prefix="tagger-") as tmp, _parquet(storage, STATE_PATH) as previous:
        out = Path(tmp) / "state.parquet"
        try:
            with pq.ParquetWriter(out, STATE, **PARQUET_OPTIONS) as writer:
                done = 0
                for batch in _sorted_batches(previous, STATE):
                    ids = batch["product_id"]
                    kept = batch.filter(pc.and_(pc.invert(_member(ids, drop)), _member(ids, current_ids)))
                    upto = _bisect(new_ids, ids[-1].as_py(), done)
                    if upto > done:
                        kept = pa.concat_tables([kept, new.slice(done, upto - done)]).sort_by("product_id")
                        done = upto
                    if kept.num_rows:
                        writer.write_table(kept, row_group_size=ROW_GROUP_ROWS)
                writer.write_table(new.slice(done), row_group_size=ROW_GROUP_ROWS)
        except _Unsorted:  # a state table not written by us: whole-table update
            state = read_table_or_empty(storage, STATE_PATH, STATE)
            keep = pc.and_(pc.invert(pc.is_in(state["product_id"], value_set=drop)),
                           pc.is_in(state["product_id"], value_set=current_ids))
            pq.write_table(pa.concat_tables([state.filter(keep), new]).sort_by("product_id"), out,
                           row_group_size=ROW_GROUP_ROWS, **PARQUET_OPTIONS)
        storage.upload(out, STATE_PATH)
