"""Ingest with the images fanned out over workers (flows/ingest_sharded.py runs the parts on
a Dask cluster): the tables and shards of one process (tagger.ingest.run), byte for byte.

The committing process holds the lake's catalog lock for the whole run. It reads the export
a chunk at a time, validates it and decides which images must be read (the same version
check as one process), and cuts those into parts. A worker fetches a part's images, hashes
them, normalises the new ones and stages them in one file of the lake
(`.staging/ingest/<run>/`); it returns each image's hash or problem. Back in export order,
the committing process decides which images are new and which shard each goes to exactly as
one process does (the new distinct hashes in export order, `shard_size` at a time, a shard
named by its hashes) and hands every full shard to a worker, which writes it from the staged
images. Why staged and not written by the fetching worker at once: which images share a
shard depends on every earlier row of the export, which no worker sees.

The products table and rejects are built and committed once, by the committing process,
with run.py's own steps (imported, not copied): which of a product's images it keeps, the
reject-fraction guard, a failed fetch keeping the product's previous row, nothing rewritten
when nothing changed, a failed run's new shards removed. A worker decodes an image unless
its bytes are one of the product's previous images; one whose bytes another product stored
already is decoded in vain (and its decode error ignored, as one process never decodes it),
which costs time, never a different table.

Three steps, each callable alone: fetch_part and write_planned_shard (in any process that
can read the images and write the lake) and ingest_in_parts, which plans and commits and
takes the fan-out that runs the other two (InProcess by default).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from catalog_schemas.tables import IMAGES
from catalog_schemas.taxonomy import Taxonomy
from tagger.config import IngestConfig
from tagger.ingest.products import (
    ProductChanges,
    ProductRuns,
    previous_images,
    write_released,
    write_taxonomy,
)
from tagger.ingest.rejects import Problem
from tagger.ingest.rows import CatalogRow
from tagger.ingest.run import (
    IngestResult,
    _keep_good_images,
    _known_images,
    _reuse_unchanged,
    _Run,
    _update_products,
    _write_rejects,
    add_products,
    row_validator,
    run_ingest,
    validate_chunk,
)
from tagger.ingest.shards import fetch_image, shard_name, write_images
from tagger.ingest.source import ImageSource
from tagger.io.parquet import RowGroupWriter, open_parquet_file
from tagger.io.storage import open_storage
from tagger.lake import image_shard_path, staging_path

log = logging.getLogger(__name__)

# Staged images per row group: a shard's worker reads a staging file whole, and a part's
# worker holds one group before it is written (256 images at 512 px: ~15 MB).
STAGED_GROUP_ROWS = 256


@dataclass(frozen=True)
class FetchPart:
    """Images of one export chunk that a worker reads: (image URI, the hashes of the
    product's previous images) each, in export order."""

    lake: str
    catalog: str
    staging: str  # lake path of the file this part's new images are staged in
    rows: list[tuple[str, tuple[str, ...]]]
    config: IngestConfig


@dataclass(frozen=True)
class FetchedPart:
    """Per image of a FetchPart, in its order: its hash (None when it could not be read) and
    the problem that keeps it out (None if none); `staging` is None when the part staged no
    image."""

    staging: str | None
    hashes: list[str | None]
    problems: list[Problem | None]


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its name, its images' hashes, and the staging files holding them."""

    lake: str
    name: str
    hashes: list[str]
    sources: dict[str, list[str]]  # staging path -> the hashes of this shard it holds


class FanOut(Protocol):
    """Runs the workers' steps on a list of inputs; results in input order."""

    def fetch(self, parts: list[FetchPart]) -> list[FetchedPart]: ...

    def write(self, plans: list[ShardPlan]) -> list[bool]: ...


class InProcess:
    """Both steps in this process, one input after another."""

    def fetch(self, parts: list[FetchPart]) -> list[FetchedPart]:
        return [fetch_part(p) for p in parts]

    def write(self, plans: list[ShardPlan]) -> list[bool]:
        return [write_planned_shard(p) for p in plans]


def fetch_part(part: FetchPart) -> FetchedPart:
    """Read, hash and (unless the bytes are one of the product's previous images) normalise
    each image, on `config.workers` threads, a shard's worth at a time; stage each new
    image once in `part.staging`. Re-running it replaces the same staging file."""
    config, storage = part.config, open_storage(part.lake)
    source = ImageSource(part.catalog, config.image_roots)
    hashes: list[str | None] = []
    problems: list[Problem | None] = []
    staged: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="tagger-part-") as tmp:
        local = Path(tmp) / "staged.parquet"
        with ThreadPoolExecutor(config.workers) as pool, \
                RowGroupWriter(local, IMAGES, STAGED_GROUP_ROWS) as out:
            for start in range(0, len(part.rows), config.shard_size):
                batch = part.rows[start:start + config.shard_size]
                rows = [CatalogRow(start + i, "", None, {}, uri) for i, (uri, _) in enumerate(batch)]
                # the previous hashes as the only known images: fetch_image then skips decoding them
                known = [dict.fromkeys(prev, "") for _, prev in batch]
                found = list(pool.map(lambda rk: fetch_image(rk[0], source, rk[1], config), zip(rows, known)))
                new = {}
                for row, problem in zip(rows, found):
                    hashes.append(row.image_hash)
                    problems.append(problem)
                    if problem is None and row.stored is not None and row.image_hash not in staged:
                        staged.add(row.image_hash)
                        new[row.image_hash] = row.stored
                out.write(_images_table(new))
        if staged:
            storage.upload(local, part.staging)
    log.info("fetched %d images, staged %d new ones in %s", len(hashes), len(staged),
             storage.url(part.staging) if staged else "no file")
    return FetchedPart(part.staging if staged else None, hashes, problems)


def _images_table(images: dict[str, tuple[bytes, int, int]]) -> pa.Table:
    return pa.table({"image_hash": list(images), "width": [v[1] for v in images.values()],
                     "height": [v[2] for v in images.values()], "data": [v[0] for v in images.values()]},
                    schema=IMAGES)


def write_planned_shard(plan: ShardPlan) -> bool:
    """Write one planned shard from the staged images; whether it was written now (False:
    it was there already, e.g. on a re-run)."""
    storage = open_storage(plan.lake)
    if storage.exists(image_shard_path(plan.name)):
        return False
    images: dict[str, tuple[bytes, int, int]] = {}
    for path, wanted in plan.sources.items():
        if not storage.exists(path):
            continue  # named below with the images it held
        with open_parquet_file(storage, path) as f:
            t = f.read()
        t = t.filter(pc.is_in(t["image_hash"], value_set=pa.array(wanted, pa.string())))
        images.update(zip(t["image_hash"].to_pylist(),
                          zip(t["data"].to_pylist(), t["width"].to_pylist(), t["height"].to_pylist())))
    missing = sorted(set(plan.hashes) - set(images))
    if missing:  # a staging file was replaced or removed under the run: trying again cannot help
        raise LookupError(f"shard {plan.name}: {len(missing)} planned images are not in their "
                           f"staging files ({', '.join(storage.url(p) for p in plan.sources)}); "
                           "re-run the ingest")
    name, created = write_images(storage, images)
    assert name == plan.name, (name, plan.name)  # both derive the name from the same hashes
    return created


class _ShardPlanner:
    """ShardWriter's decisions without the bytes: the new distinct hashes in the order they
    come, cut into shards of `shard_size`; `known` (hash -> shard) grows with every shard
    planned."""

    def __init__(self, lake: str, known, shard_size: int):
        self.lake, self.known, self.shard_size = lake, known, shard_size
        self.pending: dict[str, str] = {}  # new hash -> the staging file holding it, first seen first
        self._rows: dict[str, list[CatalogRow]] = {}
        self.shards: list[str] = []
        self.created: list[str] = []  # written by this run: removed if the run fails
        self.images_stored = 0

    def add(self, row: CatalogRow, staging: str) -> None:
        self.pending.setdefault(row.image_hash, staging)
        self._rows.setdefault(row.image_hash, []).append(row)

    def plan(self, final: bool) -> list[ShardPlan]:
        """Every full shard (and the rest too when `final`)."""
        hashes, plans = list(self.pending), []
        while len(hashes) >= self.shard_size or (final and hashes):
            batch, hashes = hashes[:self.shard_size], hashes[self.shard_size:]
            name, sources = shard_name(batch), {}
            for h in batch:
                sources.setdefault(self.pending.pop(h), []).append(h)
                for row in self._rows.pop(h):
                    row.image_shard = name
            self.known.update({h: name for h in batch})
            plans.append(ShardPlan(self.lake, name, sorted(batch), sources))
        return plans

    def written(self, plans: list[ShardPlan], created: list[bool]) -> None:
        for plan, now in zip(plans, created, strict=True):
            self.shards.append(plan.name)
            self.images_stored += len(plan.hashes)
            if now:
                self.created.append(plan.name)


def ingest_in_parts(
    catalog: str,
    taxonomy: Taxonomy | str,
    lake: str,
    config: IngestConfig | None = None,
    *,
    run_id: str | None = None,
    fan_out: FanOut | None = None,
    part_rows: int = 2000,
) -> IngestResult:
    """ingest_catalog with the images fetched, decoded and written to shards by `fan_out`
    in parts of at most `part_rows` images; the same result, tables and shards."""

    def ingest_rows(run: _Run, chunks: Iterator[pd.DataFrame]) -> None:
        staged: list[str] = []  # every staging file a part may have written, until deleted
        try:
            _ingest_parts(run, chunks, fan_out or InProcess(), part_rows, staged)
        finally:  # committed or failed, no staged image outlives the run
            _remove_staged(run, staged)

    return run_ingest(catalog, taxonomy, lake, config, ingest_rows, run_id=run_id, how=" in parts")


def _ingest_parts(run: _Run, chunks: Iterator[pd.DataFrame], fan_out: FanOut, part_rows: int,
                  staged: list[str]) -> None:
    """run.py's _ingest_rows with the images of each chunk fanned out: validate, check
    versions, fetch the parts, plan and write the full shards, build the chunk's products."""
    planner = _ShardPlanner(run.storage.uri, _known_images(run), run.config.shard_size)
    run.new_shards = planner.created
    validator = row_validator(run)
    changes = ProductChanges()
    with tempfile.TemporaryDirectory(prefix="tagger-ingest-") as tmp:
        runs = ProductRuns(Path(tmp))
        for number, df in enumerate(chunks):
            run.result.rows += len(df)
            rows, previous, as_they_were = validate_chunk(run, df, validator)
            to_fetch = _reuse_unchanged(run, rows, previous)
            parts = _parts(run, to_fetch, previous, number, part_rows)
            staged.extend(p.staging for p in parts)
            _take_fetched(planner, to_fetch, fan_out.fetch(parts) if parts else [])
            run.result.images_fetched += len(to_fetch)
            _write_shards(planner, fan_out, final=False)
            _remove_staged(run, staged, keep=set(planner.pending.values()))
            add_products(run, _keep_good_images(rows, run.rejects), previous, as_they_were, runs, changes)
        run.result.texts_truncated = validator.texts_truncated
        _write_shards(planner, fan_out, final=True)
        run.result.images_stored += planner.images_stored
        run.result.shards_written.extend(planner.shards)
        _write_rejects(run)
        _update_products(run, runs, changes, planner.known, Path(tmp) / "products.parquet")
    write_taxonomy(run.storage, run.taxonomy)
    write_released(run.storage, run.referenced, run.now)


def _parts(run: _Run, rows: list[CatalogRow], previous: Mapping[str, dict], chunk: int,
           part_rows: int) -> list[FetchPart]:
    """The images to fetch, `part_rows` at a time, each with its product's previous hashes."""
    parts = []
    for k, start in enumerate(range(0, len(rows), part_rows)):
        batch = rows[start:start + part_rows]
        refs = [(r.image_uri, tuple(i["image_hash"] for i in previous_images(previous.get(r.product_id))))
                for r in batch]
        parts.append(FetchPart(run.storage.uri, run.result.catalog,
                               staging_path(run.result.run_id, f"c{chunk:05d}-p{k:05d}"), refs, run.config))
    return parts


def _take_fetched(planner: _ShardPlanner, rows: Sequence[CatalogRow], fetched: list[FetchedPart]) -> None:
    """The workers' findings, in export order, decided as fetch_and_store decides them: an
    image stored already is reused (one process never decodes it: a decode problem found
    for it does not count), a problem is the image's, a new image waits for its shard."""
    found = ((h, problem, part.staging) for part in fetched
             for h, problem in zip(part.hashes, part.problems, strict=True))
    for row, (image_hash, problem, staging) in zip(rows, found, strict=True):
        row.image_hash = image_hash
        if image_hash is not None and image_hash in planner.known:
            row.image_shard = planner.known[image_hash]
        elif problem is not None:
            row.problem = problem
        else:
            assert staging is not None, row  # a new image without a problem was staged
            planner.add(row, staging)


def _write_shards(planner: _ShardPlanner, fan_out: FanOut, *, final: bool) -> None:
    plans = planner.plan(final)
    if plans:
        planner.written(plans, fan_out.write(plans))


def _remove_staged(run: _Run, staged: list[str], keep: set[str] = frozenset()) -> None:
    """Delete the staging files no waiting image needs (all of them at the end of a run,
    whether it committed or failed): they are copies, the shards and the export have it all."""
    for path in [p for p in staged if p not in keep]:
        try:
            run.storage.delete(path)
        except Exception as e:  # the run's own outcome matters more; the files are hidden
            log.warning("could not remove the staged images %s (%s)", run.storage.url(path), e)
        staged.remove(path)
