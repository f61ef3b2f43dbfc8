"""Predicted tags -> tag tables: `tags/history/run_date=.../<run_id>.parquet` + `tags/latest/`.

A product is tagged when it is new, its image or curated labels changed since it was last
tagged, or the model changed (all with `full`). Curated labels always win: for an
attribute the catalog labels, the tag rows are the curated values (source='curated'),
never predictions; a reviewer's correction that wins (tagger.corrections) is emitted the
same way as source='reviewed' (review pull writes its rows into latest at once, tag runs
keep them). `tags/state/tagged.parquet` remembers what each product was tagged
from, so products where every attribute abstained are not re-tagged every night. The model
is the lake's production version unless one is named (tagger.model.production), so a
promotion or a rollback re-tags every product on the next run; a catalog taxonomy that
differs from the model's is reported in the result's `drift` (tagger.tag.drift).

Full and incremental runs stream alike: the products to tag wait in a local file (the
scan's spill), are scored a chunk at a time (TagConfig.chunk_size) in product id order, and
each chunk's rows go into the local history file (in row groups) and the latest merge
(tagger.tag.merge) as they come, so a run holds a chunk's rows, a batch of each table and
the product ids, not every product's rows.

Order of writes: history, then latest, then state. A crash in between leaves the previous
latest readable, and the re-run (same run id) replaces its own history file.

A run is three steps, each usable alone (flows/tag_sharded.py runs them in separate tasks):
plan_tagging (tagger.tag.plan), score_products (any process that can read the lake), and
write_tags, which commits. tag_catalog is all three in one process.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog_schemas.tables import TAG_HISTORY
from tagger.config import TagConfig
from tagger.corrections import Corrections, load_corrections
from tagger.io.lock import locked
from tagger.io.storage import RowGroupWriter, Storage, open_storage
from tagger.lake import HISTORY_PREFIX, LATEST_PATH, STATE_PATH, TAXONOMY_PATH, read_lake_taxonomy
from tagger.model.production import resolve_version
from tagger.data.shards import order_by_shard
from tagger.model.scoring import ImageScorer
from tagger.model.versions import read_card
from tagger.tag import streams
from tagger.tag.changes import compute_tag_changes_of_files
from tagger.tag.drift import compute_taxonomy_drift
from tagger.tag.merge import STATE_COLUMNS, merge_latest, merge_state, state_rows
from tagger.tag.plan import Scan, TagPlan, plan_tagging, scan_products
from tagger.tag.rows import ROW_COLUMNS, Rows, compute_tag_rows, rows_table

log = logging.getLogger(__name__)

__all__ = ["TagResult", "TagPlan", "plan_tagging", "score_products", "tag_catalog", "write_tags"]


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
    drift: dict = field(default_factory=dict)  # compute_taxonomy_drift(catalog, model); {} if unknown
    history_path: str = ""
    latest_path: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def score_products(lake: str, model_version: str, product_ids: list[str],
                   config: TagConfig | None = None, products: pa.Table | None = None) -> Rows:
    """Tag rows (compute_tag_rows columns) for these products. Reads only: one shard of a
    run, in any process or machine that can read the lake. `products`: their rows
    (PRODUCT_COLUMNS), when the caller has them."""
    config = config or TagConfig()
    if products is None:
        products = scan_products(open_storage(lake), model_version, wanted=product_ids).todo
    todo = products.filter(pc.is_in(products["product_id"], value_set=pa.array(product_ids, pa.string())))
    rows: Rows = {k: [] for k in ROW_COLUMNS}
    parts = (todo.slice(start, config.chunk_size) for start in range(0, todo.num_rows, config.chunk_size))
    for chunk in score_chunks(lake, model_version, parts, config, total=todo.num_rows):
        for k, v in chunk.items():
            rows[k].extend(v)
    return rows


def score_chunks(lake: str, model_version: str, parts: Iterable[pa.Table], config: TagConfig,
                 images: Mapping[str, np.ndarray] | None = None, *, total: int) -> Iterator[Rows]:
    """The tag rows of each table of `parts` (PRODUCT_COLUMNS rows: a scoring chunk each), in
    their order; `total`: how many products they hold, for the progress line. `images`: model
    inputs by image hash already in memory (ImageScorer.score)."""
    storage = open_storage(lake)
    scorer = ImageScorer.of_version(storage, model_version, config)  # weights only if needed
    card = scorer.card
    corrections = load_corrections(storage)
    done = 0
    for part in parts:
        chunk = _with_corrections(part.to_pylist(), corrections)
        del part
        done += len(chunk)
        chunk = [chunk[i] for i in order_by_shard([p["image_shard"] for p in chunk])]
        scored = scorer.score(lake, [p["image_shard"] for p in chunk], [p["image_hash"] for p in chunk],
                              desc=f"tag {done}/{total}", images=images,
                              texts=[p.get("text") for p in chunk], more=[p.get("more_images") for p in chunk])
        arrays = scorer.arrays
        yield compute_tag_rows(card.taxonomy, chunk, scored.scores, arrays.thresholds,
                               arrays.auto_thresholds, argmax_slices=arrays.softmax_slices)


def _with_corrections(products: list[dict], corrections: Corrections) -> list[dict]:
    """Product rows whose labels include the corrections that win (tagger.corrections), with
    the attributes they decided as `reviewed`: curated rows, never predictions."""
    if not len(corrections):
        return products
    out = []
    for p in products:
        labels, reviewed = corrections.apply(p["product_id"], p["labels"], p["updated_at"])
        out.append({**p, "labels": labels, "reviewed": reviewed})
    return out


@locked("tags")  # one tag run per lake at a time (tagger/io/lock.py)
def tag_catalog(
    lake: str,
    *,
    model_version: str | None = None,
    full: bool = False,
    run_id: str | None = None,
    run_date: date | None = None,
    config: TagConfig | None = None,
    images: Mapping[str, np.ndarray] | None = None,
) -> TagResult:
    """Tag new and changed products (all with `full` or a new model) and write the tables,
    with `model_version` (default: the lake's production version, tagger.model.production).
    `images`: model inputs by image hash already in memory (a nightly run's new images,
    tagger.nightly); the other products' images are read from their shards."""
    t0 = time.perf_counter()
    storage = open_storage(lake)
    # a missing model is the first error
    version = read_card(storage, resolve_version(storage, model_version)).version
    run = _Run.start(run_id, run_date, config, full, t0)
    with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        # read once, for all three steps; the products to tag wait in a local file
        scan = scan_products(storage, version, full=full, spill=Path(tmp))
        # Chunks in product id order, each sorted, so their rows arrive in TAG_ORDER and are
        # streamed into the history file and the latest merge as they are scored.
        chunks = score_chunks(lake, version, scan.batches(run.config.chunk_size), run.config, images,
                              total=scan.tagged)
        meta = run.metadata(version)
        return _write_tags(storage, version, (rows_table([c], version, run.run_id, run.now, meta)
                                              for c in chunks), run, scan)


@locked("tags")
def write_tags(lake: str, plan: TagPlan, rows: list[Rows], *, full: bool = False,
               run_id: str | None = None, run_date: date | None = None,
               config: TagConfig | None = None) -> TagResult:
    """Commit the tag rows of a planned run (from one or many score_products shards)."""
    run = _Run.start(run_id, run_date, config, full, time.perf_counter())
    version = plan.model_version
    table = rows_table(rows, version, run.run_id, run.now, run.metadata(version))  # shards: any order
    storage = open_storage(lake)
    return _write_tags(storage, version, iter([table]), run,
                       scan_products(storage, version, wanted=plan.product_ids))


@dataclass(frozen=True)
class _Run:
    """Who is committing: the run's identity and settings, fixed before anything is written."""

    run_id: str
    run_date: date
    now: datetime  # tagged_at of every row
    config: TagConfig
    full: bool
    t0: float  # perf_counter at the start, for TagResult.seconds

    @classmethod
    def start(cls, run_id: str | None, run_date: date | None, config: TagConfig | None,
              full: bool, t0: float) -> _Run:
        """A new run's identity; a given run id (a retry) is kept, so it replaces its output."""
        now = datetime.now(timezone.utc)
        return cls(run_id or f"tag-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
                   run_date or now.date(), now, config or TagConfig(), full, t0)

    def metadata(self, model_version: str) -> dict[str, str]:
        """Schema metadata of the tables the run writes: which run, model and config."""
        return {"run_id": self.run_id, "model_version": model_version,
                "config": self.config.model_dump_json()}


def _write_tags(storage: Storage, version: str, tables: Iterator[pa.Table], run: _Run,
                scan: Scan) -> TagResult:
    """History, then latest, then state (the order the module docstring explains). `tables`:
    the run's rows (TAG_HISTORY) in TAG_ORDER, pulled as the latest merge reaches them and
    streamed into the history file on the way, so neither table is held whole."""
    result = TagResult(run.run_id, run.run_date.isoformat(), version, storage.uri)
    result.products, result.tagged = scan.products, scan.tagged
    result.skipped = scan.products - scan.tagged
    log.info("tag %s with model %s: %d of %d products tagged", run.run_id, version, scan.tagged,
             scan.products)

    meta = run.metadata(version)
    with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        history_file, latest_file = Path(tmp) / "history.parquet", Path(tmp) / "latest.parquet"
        with RowGroupWriter(history_file, TAG_HISTORY.with_metadata({**TAG_HISTORY.metadata, **meta})) as history:
            merged = merge_latest(storage, _recorded(tables, history), scan.tagged_ids, scan.ids,
                                  latest_file, meta)
        result.history_rows = history.rows
        if history.rows or run.full:  # a night with nothing to tag leaves no empty file behind
            result.history_path = _write_history(storage, history_file, run.run_id, run.run_date)
        if scan.tagged or merged.rows != merged.previous_rows:
            storage.upload(latest_file, LATEST_PATH)
            log.info("wrote %d rows to %s", merged.rows, storage.url(LATEST_PATH))
        # Only tagged and removed products can change (the others' rows are copied as they
        # were), and their rows in the new latest table are exactly the new rows.
        result.changes = compute_tag_changes_of_files(merged.affected_path, history_file)
    result.removed = merged.removed
    result.latest_rows, result.latest_path = merged.rows, storage.url(LATEST_PATH)
    result.tags_per_attribute = merged.tags_per_attribute
    result.drift = _taxonomy_drift(storage, version)

    if scan.tagged or result.removed:
        _write_state(storage, scan, version, run.run_id)
    result.seconds = round(time.perf_counter() - run.t0, 3)
    log.info("tag %s: %d products tagged, %d history rows, %d latest rows in %.1fs", run.run_id,
             result.tagged, result.history_rows, result.latest_rows, result.seconds)
    return result


def _recorded(tables: Iterator[pa.Table], history: RowGroupWriter) -> Iterator[pa.Table]:
    """`tables`, each written to the history file as it passes."""
    for table in tables:
        history.write(table)
        yield table


def _taxonomy_drift(storage: Storage, version: str) -> dict:
    """The drift between the lake's catalog taxonomy and the model's, logged as a warning
    (tagger.tag.drift); {} for a lake without catalog/taxonomy.json."""
    if not storage.exists(TAXONOMY_PATH):
        return {}
    drift = compute_taxonomy_drift(read_lake_taxonomy(storage), read_card(storage, version).taxonomy)
    if drift["warning"]:
        log.warning("model %s: %s", version, drift["warning"])
    return drift


def _write_history(storage: Storage, local: Path, run_id: str, run_date: date) -> str:
    """One file per run; a re-run of the same run id replaces it (in any partition)."""
    path = f"{HISTORY_PREFIX}/run_date={run_date.isoformat()}/{run_id}.parquet"
    for old in storage.list(HISTORY_PREFIX):
        if old.endswith(f"/{run_id}.parquet") and old != path:
            storage.delete(old)
    storage.upload(local, path)
    log.info("wrote %s", storage.url(path))
    return storage.url(path)


def _write_state(storage: Storage, scan: Scan, model_version: str, run_id: str) -> None:
    """What each current product was last tagged from: the tagged products' rows replace
    theirs, products gone from the catalog drop out (tagger.tag.merge.merge_state)."""
    def new_rows() -> Iterator[pa.Table]:
        for part in scan.batches(streams.BATCH_ROWS, columns=STATE_COLUMNS):
            yield state_rows(part, model_version, run_id)

    with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        out = Path(tmp) / "state.parquet"
        merge_state(storage, new_rows, scan.tagged_ids, scan.ids, out)
        storage.upload(out, STATE_PATH)
