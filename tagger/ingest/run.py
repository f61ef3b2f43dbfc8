"""Catalog export (CSV / JSON Lines / Parquet, local or S3) -> products, image shards, rejects.

Incremental: an image whose source is unchanged (same URI and size+mtime / ETag) is not
read again, an image whose bytes are already stored is not decoded again, and a table
whose content did not change is not rewritten. Bad rows become reject rows with a stage
and a reason, and so does a bad image of a product ingested with its other images
(product_kept); the run goes on. Problems with the catalog as a whole (unreadable, empty,
missing columns) are a CatalogError before anything is written.

The export is streamed a chunk of rows at a time (IngestConfig.chunk_size): each chunk is
validated, its changed images fetched and written to shards, and its products rows built
before the next is read; the shards, rejects and
products tables come out the same for any chunk size. The tables are written once, at the
end, so the guards hold as before: nothing is committed when too many rows were rejected.

The steps, each in its own module: export (read and check the export), rows (validate
each row), source (where images come from), shards (fetch, normalise, write shards),
rejects and products (the tables written at the end).
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa

from catalog_schemas.tables import PRODUCTS
from catalog_schemas.taxonomy import Taxonomy, load_taxonomy
from tagger.config import IngestConfig
from tagger.ingest.export import CatalogError, check_columns, read_catalog_chunks, text_only_columns
from tagger.ingest.products import (
    PreviousProducts,
    PreviousRows,
    ProductChanges,
    ProductRuns,
    fill_pending_shards,
    previous_images,
    products_table,
    write_products,
    write_released,
    write_taxonomy,
)
from tagger.ingest.rejects import Rejects, write_rejects
from tagger.ingest.rows import CatalogRow, RowValidator, content_digest
from tagger.ingest.shards import KnownImages, OnImage, ShardWriter, fetch_and_store, read_stored_hashes
from tagger.ingest.source import ImageSource, read_versions
from tagger.ingest.text import MAX_TEXT_CHARS
from tagger.ingest.unchanged import context_key, mapped_columns, row_digests, unchanged_rows
from tagger.io.lock import lake_lock
from tagger.io.parquet import RowGroupWriter, read_table
from tagger.io.storage import Storage, open_storage
from tagger.lake import PRODUCTS_DEFAULTS, PRODUCTS_PATH, REJECTS_PATH, image_shard_path, named_shards

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    """What one ingest run did, in counts (the CLI prints it as JSON, flows log it)."""

    run_id: str
    catalog: str
    lake: str
    rows: int = 0
    products: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    rejected: int = 0  # rows not ingested
    images_rejected: int = 0  # images left out of products ingested with their other images
    texts_truncated: int = 0  # valid rows whose text was cut to MAX_TEXT_CHARS
    images_fetched: int = 0
    images_stored: int = 0
    shards_written: list[str] = field(default_factory=list)
    products_written: bool = False
    seconds: float = 0.0
    reject_reasons: dict[str, int] = field(default_factory=dict)  # reject rows (rows and images)
    rejects_history: str | None = None  # this run's rejects: catalog/rejects/run_date=.../<run_id>.parquet

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Run:
    """What every step of one ingest run works with."""

    storage: Storage
    taxonomy: Taxonomy
    config: IngestConfig
    source: ImageSource
    rejects: Rejects
    result: IngestResult
    now: datetime  # the time stamp of every row this run writes
    previous: PreviousProducts  # the products table before this run, read a batch at a time
    on_image: OnImage | None = None  # ingest_catalog's hook: the pixels of each image stored now
    new_shards: list[str] = field(default_factory=list)  # written by this run (ShardWriter.created)
    referenced: set[str] = field(default_factory=set)  # the shards the products table names now


def ingest_catalog(
    catalog: str,
    taxonomy: Taxonomy | str,
    lake: str,
    config: IngestConfig | None = None,
    *,
    run_id: str | None = None,
    on_image: OnImage | None = None,
) -> IngestResult:
    """Ingest one catalog export into the lake; returns counts of what happened.
    `on_image(image_hash, pixels)` is called for every image decoded and stored by this run
    (tagger.ingest.shards), on the fetching threads."""
    return run_ingest(catalog, taxonomy, lake, config, _ingest_rows, run_id=run_id, on_image=on_image)


IngestRows = Callable[["_Run", Iterator[pd.DataFrame]], None]


def run_ingest(catalog: str, taxonomy: Taxonomy | str, lake: str, config: IngestConfig | None,
               ingest_rows: IngestRows, *, run_id: str | None = None, on_image: OnImage | None = None,
               how: str = "") -> IngestResult:
    """The envelope of every ingest (one process or fanned out, tagger.ingest.sharded): the
    export's columns checked before anything is written, the catalog lock, the previous
    products table, `ingest_rows(run, chunks)` for the work, and a failed run's new shards
    removed."""
    t0 = time.perf_counter()
    config = config or IngestConfig()
    taxonomy = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)
    run_id = run_id or f"ingest-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    storage = open_storage(lake)
    result = IngestResult(run_id=run_id, catalog=str(catalog), lake=storage.uri)
    now = datetime.now(timezone.utc)

    chunks = read_catalog_chunks(str(catalog), config.chunk_size, text_only_columns(taxonomy))
    first = next(chunks)
    check_columns(first, taxonomy, str(catalog))
    chunks = itertools.chain([first], chunks)
    del first  # held here, the first chunk's rows would stay in memory for the whole run
    # Catalog-level errors above write nothing, not even a lock. One ingest per lake at a time.
    with lake_lock(storage, "catalog", owner=run_id), _open_previous(storage, config.rebuild) as previous:
        run = _Run(storage, taxonomy, config, ImageSource(str(catalog), config.image_roots),
                   Rejects(run_id, str(catalog), now), result, now, previous, on_image)
        try:
            ingest_rows(run, chunks)
        except BaseException:  # a full disk, a refused write, SIGTERM: leave nothing half-done
            _remove_new_shards(run)
            raise
        result.seconds = round(time.perf_counter() - t0, 3)
    log.info(
        "ingest %s%s: %d rows -> %d products (%d new, %d changed, %d removed), %d rejected, "
        "%d images stored in %.1fs", run_id, how, result.rows, result.products, result.new,
        result.changed, result.removed, result.rejected, result.images_stored, result.seconds,
    )
    if result.texts_truncated:
        log.info("ingest %s: %d product texts were longer than %d characters and were cut at a word",
                 run_id, result.texts_truncated, MAX_TEXT_CHARS)
    return result


@contextmanager
def _open_previous(storage: Storage, rebuild: bool) -> Iterator[PreviousProducts]:
    """The products table before this run, from a local copy; none on a rebuild (the old
    one may be damaged or lost) or a first ingest. A damaged one raises the lake's
    CorruptTable, which names the file and the rebuild."""
    if rebuild or not storage.exists(PRODUCTS_PATH):
        yield PreviousProducts(None)
        return
    with storage.local_copy(PRODUCTS_PATH) as local:
        try:
            previous = PreviousProducts(Path(local))
            first = previous.batches()
            next(first, None)  # the columns are there and can be read
            first.close()
        except (pa.ArrowException, KeyError, OSError):
            # raises CorruptTable with the remedy
            read_table(storage, PRODUCTS_PATH, PRODUCTS, PRODUCTS_DEFAULTS)
            raise
        yield previous


def _ingest_rows(run: _Run, chunks: Iterator[pd.DataFrame]) -> None:
    """The run under the lake's lock: each chunk's rows and images, then the tables. The
    shard writer runs across chunks, so the shards are those of one chunk."""
    writer = ShardWriter(run.storage, _known_images(run), run.config.shard_size)
    run.new_shards = writer.created  # the same list: what to remove if the run fails midway
    validator = row_validator(run)
    changes = ProductChanges()
    with tempfile.TemporaryDirectory(prefix="tagger-ingest-") as tmp:
        runs = ProductRuns(Path(tmp))
        for df in chunks:
            _ingest_chunk(run, df, validator, writer, runs, changes)
            del df  # not held while the next chunk is read
        run.result.texts_truncated = validator.texts_truncated
        writer.flush(final=True)
        run.result.images_stored += writer.images_stored
        run.result.shards_written.extend(writer.shards)
        _write_rejects(run)
        _update_products(run, runs, changes, writer.known, Path(tmp) / "products.parquet")
    write_taxonomy(run.storage, run.taxonomy)
    write_released(run.storage, run.referenced, run.now)


def _ingest_chunk(run: _Run, df: pd.DataFrame, validator: RowValidator, writer: ShardWriter,
                  runs: ProductRuns, changes: ProductChanges) -> None:
    """One chunk's rows, images and products run. Its own function so that the chunk's rows
    (Python objects, a few hundred bytes each) are freed before the next chunk is read."""
    run.result.rows += len(df)
    rows, previous, as_they_were = validate_chunk(run, df, validator)
    to_fetch = _reuse_unchanged(run, rows, previous)
    run.result.images_fetched += fetch_and_store(to_fetch, run.source, writer, run.config,
                                                 final=False, on_image=run.on_image)
    add_products(run, _keep_good_images(rows, run.rejects), previous, as_they_were, runs, changes)


def row_validator(run: _Run) -> RowValidator:
    """The run's validator: a later row with the id of a row taken as it was is compared
    with that row's previous content."""
    validator = RowValidator(run.taxonomy, run.source, run.rejects)
    validator.digest_of_taken = lambda pid: _content_digest_of(run.previous, pid)
    return validator


def validate_chunk(run: _Run, df: pd.DataFrame, validator: RowValidator) -> tuple[list[CatalogRow], PreviousRows, pa.Table]:
    """A chunk's rows to ingest (validated), their products' previous rows, and the rows
    taken as they were, unvalidated (tagger.ingest.unchanged)."""
    ids = validator.ids(df)
    previous = run.previous.by_id(dict.fromkeys(i for i in ids if i is not None))
    columns = mapped_columns(run.taxonomy, df.columns)
    digests = row_digests(df, columns, context_key(run.taxonomy, run.source, run.config, columns))
    taken, as_they_were = unchanged_rows(ids, digests, validator.seen_before(ids), previous.table,
                                         run.source, run.config)
    return list(validator.validate(df, ids=ids, taken=taken, digests=digests)), previous, as_they_were


def add_products(run: _Run, good: list[CatalogRow], previous: PreviousRows, as_they_were: pa.Table,
                 runs: ProductRuns, changes: ProductChanges) -> None:
    """The chunk's products rows (validated ones dated against their previous rows, and the
    ones taken as they were) as one more sorted run."""
    table, chunk_changes = products_table(good, previous, run.result.run_id, run.now)
    runs.add(pa.concat_tables([table, as_they_were]) if as_they_were.num_rows else table)
    chunk_changes.unchanged += as_they_were.num_rows
    changes.add(chunk_changes)


def _content_digest_of(previous: PreviousProducts, product_id: str) -> int:
    """The content digest of a product's previous row: what its row, taken as it was, would
    have been validated to (only asked for when a later row has its id)."""
    (row,) = previous.rows_of([product_id]).to_pylist()
    uris = [i["image_uri"] for i in previous_images(row)]
    return content_digest(row["labels"], uris, row["text"])


def _known_images(run: _Run) -> dict[str, str] | KnownImages:
    """The images stored already, by hash: the previous products', or on a rebuild what the
    shards themselves hold."""
    if run.config.rebuild:
        return read_stored_hashes(run.storage)
    return run.previous.known_images()


def _remove_new_shards(run: _Run) -> None:
    """A failed run's new shards, unless a committed products table references them: a
    shard no table names is disk space nobody gets back (tagger vacuum would, days later)."""
    if run.result.products_written or not run.new_shards:
        return
    for name in run.new_shards:
        try:
            run.storage.delete(image_shard_path(name))
        except Exception as e:  # the run's own error matters more; vacuum removes it later
            log.warning("could not remove the failed run's shard %s (%s); tagger vacuum will",
                        run.storage.url(image_shard_path(name)), e)
    log.info("removed the %d image shards of the failed run %s", len(run.new_shards), run.result.run_id)


def _reuse_unchanged(run: _Run, rows: list[CatalogRow], previous: Mapping[str, dict]) -> list[CatalogRow]:
    """Cheap change check first: an image with the URI and source version of one of its
    product's previous images reuses that one's hash and shard. Returns the images (rows and
    the rows in their `more`) that must be read, in export order."""
    images = [i for r in rows for i in r.images() if i.problem is None]
    versions = read_versions(run.source, [i.image_uri for i in images], run.config.workers)
    to_fetch = []
    for image, version in zip(images, versions):
        image.image_version = version
        same = _previous_image(previous.get(image.product_id), image.image_uri, version) if version else None
        if same:
            image.image_hash, image.image_shard = same["image_hash"], same["image_shard"]
        else:
            to_fetch.append(image)
    return to_fetch


def _previous_image(prev: dict | None, uri: str, version: str) -> dict | None:
    """The previous row's image of this URI and source version (the last one), or None."""
    return next((i for i in reversed(previous_images(prev))
                 if i["image_uri"] == uri and i["image_version"] == version), None)


def _keep_good_images(rows: list[CatalogRow], rejects: Rejects) -> list[CatalogRow]:
    """The rows to ingest once their images were fetched (one process or in parts), each
    showing its good images only: the first good one in mapping order as its own, the others
    in `more`. A bad image of a product that has a good one is a reject row of its own, the
    product kept; a product without any is one reject row with its first image's problem."""
    kept = []
    for row in rows:
        images = row.images()
        good = [i for i in images if i.problem is None]
        if not good:
            rejects.add(row.index, row.product_id, row.problem.others_failed(len(images) - 1))
            continue
        for image in images:
            if image.problem is not None:
                rejects.add(row.index, row.product_id, image.problem.left_out(len(good)), product_kept=True)
                row.digest = None  # validated every run: its reject row is written again
        if good[0] is not row:
            row.take_image(good[0])
        row.more = good[1:]
        kept.append(row)
    return kept


def _write_rejects(run: _Run) -> None:
    """Count and write the rejects; refuse to go on when too many rows were rejected (a
    broken export or image store must not wipe the products table)."""
    result, config = run.result, run.config
    result.rejected = len(run.rejects.row_numbers)
    result.images_rejected = run.rejects.images_left_out()
    result.reject_reasons.update(run.rejects.by_reason())
    result.rejects_history = write_rejects(run.storage, run.rejects, rebuild=run.config.rebuild)
    if result.rejected > config.max_reject_fraction * result.rows:
        raise CatalogError(
            f"{result.rejected} of {result.rows} rows were rejected ({result.reject_reasons}), more "
            f"than max_reject_fraction={config.max_reject_fraction}: the products table was not "
            f"updated. See {run.storage.url(REJECTS_PATH)}."
        )


def _update_products(run: _Run, runs: ProductRuns, changes: ProductChanges, known,
                     local: Path) -> None:
    """Merge the chunks' products into one table (sorted by id) and upload it if it changed."""
    result, previous = run.result, run.previous
    # A product whose image could not be fetched this time (network, throttling) keeps its
    # previous row: a flaky night must not drop it and its tags.
    kept = previous.rows_of(run.rejects.product_ids("fetch_error"))
    runs.add(kept)
    result.new, result.changed = changes.new, changes.changed
    result.unchanged = changes.unchanged + kept.num_rows
    # every previous product is in the new table once, as changed, unchanged or kept
    result.removed = previous.num_rows - changes.changed - result.unchanged
    referenced: set[str] = set()
    with RowGroupWriter(local, PRODUCTS) as out:
        for batch in runs.merged():
            batch = fill_pending_shards(batch, known)
            referenced.update(named_shards(batch))
            out.write(batch)
    result.products = out.rows
    result.products_written = write_products(run.storage, local, out.rows, previous)
    run.referenced = referenced
