"""Catalog export (CSV / JSON Lines / Parquet, local or S3) -> products, image shards, rejects.

Incremental: an image whose source is unchanged (same URI and size+mtime / ETag) is not
read again, an image whose bytes are already stored is not decoded again, and a table
whose content did not change is not rewritten. Bad rows become reject rows with a stage
and a reason; the run goes on. Problems with the catalog as a whole (unreadable, empty,
missing columns) are a CatalogError before anything is written.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import logging
import os
import string
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath

import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from catalog_schemas.tables import IMAGES, PRODUCTS, REJECTS
from catalog_schemas.taxonomy import Taxonomy, load_taxonomy
from tagger.config import IngestConfig
from tagger.data.images import ImageError, normalise_image
from tagger.io.lock import lake_lock
from tagger.io.storage import (
    Storage,
    create_s3_client,
    is_s3,
    open_file,
    open_storage,
    read_table_or_empty,
    split_s3,
    write_table,
)
from tagger.labels import LabelError, parse_labels
from tagger.lake import IMAGES_PREFIX, PRODUCTS_PATH, REJECTS_PATH, TAXONOMY_PATH

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 64 * 2**20  # a product photo is a few MB; anything bigger is refused unread


class CatalogError(ValueError):
    """The catalog as a whole cannot be ingested; nothing was written."""


@dataclass
class IngestResult:
    run_id: str
    catalog: str
    lake: str
    rows: int = 0
    products: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    rejected: int = 0
    images_fetched: int = 0
    images_stored: int = 0
    shards_written: list[str] = field(default_factory=list)
    products_written: bool = False
    seconds: float = 0.0
    reject_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# --- reading the export ------------------------------------------------------------------


def read_catalog(uri: str) -> pd.DataFrame:
    """The export as a DataFrame of Python objects; CSV cells stay text ('' = empty)."""
    storage, name = open_file(uri)
    if not storage.exists(name):
        raise CatalogError(f"Catalog {uri} does not exist.")
    data = storage.read_bytes(name)
    suffix = PurePosixPath(name.lower().removesuffix(".gz")).suffix
    compression = "gzip" if name.lower().endswith(".gz") else None
    try:
        if suffix in {".csv", ".tsv", ".txt"}:
            df = pd.read_csv(
                io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8",
                sep="\t" if suffix == ".tsv" else ",", compression=compression,
            )
        elif suffix in {".jsonl", ".ndjson", ".json"}:
            df = pd.read_json(io.BytesIO(data), lines=True, dtype=False, compression=compression)
        elif suffix == ".parquet":
            df = pd.read_parquet(io.BytesIO(data))
        else:
            raise CatalogError(
                f"Catalog {uri}: unknown format {suffix!r}. Accepted: .csv, .tsv, .jsonl, "
                ".ndjson, .json (JSON Lines), .parquet (optionally .gz for text formats)."
            )
    except UnicodeDecodeError as e:
        raise CatalogError(
            f"Catalog {uri} is not UTF-8 (byte {e.start}: {e.reason}). Re-export it as UTF-8, "
            "e.g. iconv -f latin1 -t utf-8."
        ) from None
    except (ValueError, pd.errors.ParserError) as e:
        if isinstance(e, CatalogError):
            raise
        raise CatalogError(f"Catalog {uri} cannot be parsed as {suffix}: {e}") from None
    if df.empty:
        raise CatalogError(f"Catalog {uri} has no rows.")
    return df.astype(object).where(df.notna(), None)


def _template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def check_columns(df: pd.DataFrame, taxonomy: Taxonomy, uri: str) -> None:
    """Every column the mapping and taxonomy need is present, or a CatalogError naming them."""
    m = taxonomy.catalog
    needed = [m.id] + ([m.category] if m.category else [])
    needed += _template_fields(m.image) if "{" in m.image else [m.image]
    labels = [a.source_column for a in taxonomy.attributes]
    missing = [c for c in needed if c not in df.columns]
    missing_labels = [c for c in labels if c not in df.columns]
    if missing or len(missing_labels) == len(labels):
        cols = [str(c) for c in df.columns]
        by_lower = {c.lower(): c for c in cols}
        hints = []
        for c in missing or missing_labels:
            close = [by_lower[c.lower()]] if c.lower() in by_lower else difflib.get_close_matches(c, cols, n=1)
            hints.append(f"{c!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        what = "columns" if missing else "every label column"
        raise CatalogError(
            f"Catalog {uri} lacks {what} {', '.join(hints)}. It has: {', '.join(cols)}. "
            "Rename them or set the taxonomy's `catalog:` mapping (id, category, image) "
            "and attributes' `column:`."
        )
    if missing_labels:
        log.warning("catalog has no column for %s: those labels are unknown", missing_labels)


# --- images ------------------------------------------------------------------------------


class ImageSource:
    """Reads source images named by local paths or s3:// URIs (one S3 client, thread-safe)."""

    def __init__(self, catalog_uri: str):
        self.base = catalog_uri.rsplit("/", 1)[0] if is_s3(catalog_uri) else os.path.dirname(
            os.path.abspath(catalog_uri)
        )
        # Where the folder really is: a catalog in a symlinked folder (/tmp -> /private/tmp)
        # names images that are inside it once both are resolved.
        self._real_base = self.base if is_s3(self.base) else os.path.realpath(self.base)
        self._real_dirs: dict[str, str] = {}  # realpath per folder: catalogs name few of them
        self._s3 = None

    @property
    def s3(self):
        if self._s3 is None:
            self._s3 = create_s3_client()
        return self._s3

    def resolve(self, ref: str) -> str:
        """Absolute URI of an image reference; relative ones may not leave the catalog's folder."""
        ref = ref.strip()
        if ref.startswith("file://"):
            raise LabelError("bad_image_uri", f"file:// URIs are not accepted: {ref!r}; use a path")
        if is_s3(ref):
            return ref
        if "://" in ref:
            raise LabelError("bad_image_uri", f"unsupported URI scheme in {ref!r}; use a path or s3://")
        if is_s3(self.base):
            if ref.startswith("/") or ".." in ref.split("/"):
                raise LabelError("image_outside_root", f"{ref!r} leaves the catalog's prefix")
            return f"{self.base}/{ref}"
        path = self._realpath(os.path.join(self.base, ref))
        if path != self._real_base and not path.startswith(self._real_base.rstrip(os.sep) + os.sep):
            raise LabelError(
                "image_outside_root", f"{ref!r} resolves to {path}, outside the catalog folder {self.base}"
            )
        return path

    def _realpath(self, path: str) -> str:
        """os.path.realpath(path), with the folder's part cached: realpath(dir/name) is
        realpath(realpath(dir)/name), and only `name` itself can still be a link. A nightly
        re-ingest resolves every row's image (realpath per row was a third of it)."""
        head, name = os.path.split(path)
        if name in ("", ".", ".."):
            return os.path.realpath(path)
        real_head = self._real_dirs.get(head)
        if real_head is None:
            if len(self._real_dirs) > 100_000:  # one folder per image: do not grow without end
                self._real_dirs.clear()
            real_head = self._real_dirs[head] = os.path.realpath(head)
        joined = os.path.join(real_head, name)
        return os.path.realpath(joined) if os.path.islink(joined) else joined

    def version(self, uri: str) -> str | None:
        try:
            if is_s3(uri):
                bucket, key = split_s3(uri)
                return self.s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
            st = os.stat(uri)
            return f"{st.st_size}-{st.st_mtime_ns}"
        except Exception:
            return None  # unknown: the image is read and hashed

    def read(self, uri: str) -> bytes:
        """The file's bytes; a file over MAX_IMAGE_BYTES is refused before it is read, so
        memory stays bounded by workers x MAX_IMAGE_BYTES whatever the source holds."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                obj = self.s3.get_object(Bucket=bucket, Key=key)
            except self.s3.exceptions.NoSuchKey:
                raise FileNotFoundError(uri) from None
            with obj["Body"] as body:
                _check_size(uri, obj["ContentLength"])
                return body.read()
        with open(uri, "rb") as f:
            _check_size(uri, os.fstat(f.fileno()).st_size)
            return f.read(MAX_IMAGE_BYTES + 1)


class ImageTooBig(ValueError):
    pass


def _check_size(uri: str, size: int) -> None:
    if size > MAX_IMAGE_BYTES:
        raise ImageTooBig(f"image {uri} is {size / 1e6:.0f} MB, over the {MAX_IMAGE_BYTES / 1e6:.0f} MB "
                          "limit for a product photo; export a smaller rendition")


@dataclass
class _Row:
    index: int
    product_id: str
    category: str | None
    labels: dict[str, list[str]]
    image_uri: str
    image_version: str | None = None
    image_hash: str | None = None
    image_shard: str | None = None
    stored: tuple[bytes, int, int] | None = None  # normalised image waiting for a shard


def _fetch(row: _Row, source: ImageSource, known: dict[str, str], config: IngestConfig):
    """Fill in hash (and a normalised image if new); return a reject tuple or None."""
    try:
        data = source.read(row.image_uri)
    except FileNotFoundError:
        return ("fetch", "missing_file", f"image {row.image_uri} does not exist")
    except ImageTooBig as e:
        return ("fetch", "file_too_large", str(e))
    except IsADirectoryError:
        return ("fetch", "not_a_file", f"image {row.image_uri} is a directory")
    except Exception as e:  # retries are botocore's; what is left is a reject
        return ("fetch", "fetch_error", f"image {row.image_uri}: {type(e).__name__}: {e}")
    row.image_hash = hashlib.sha256(data).hexdigest()
    if row.image_hash in known:
        row.image_shard = known[row.image_hash]
        return None
    try:
        row.stored = normalise_image(
            data, max_side=config.image_max_side, quality=config.jpeg_quality,
            max_pixels=config.max_pixels,
        )
    except ImageError as e:
        return ("decode", e.reason, f"image {row.image_uri}: {e.detail}")
    return None


def _write_shard(storage: Storage, rows: list[_Row]) -> str:
    """One Parquet shard of new images; its name is derived from its content (idempotent)."""
    unique = {r.image_hash: r.stored for r in rows}
    hashes = sorted(unique)
    name = "shard-" + hashlib.sha256("".join(hashes).encode()).hexdigest()[:20] + ".parquet"
    path = f"{IMAGES_PREFIX}/{name}"
    if not storage.exists(path):
        table = pa.table(
            {
                "image_hash": hashes,
                "width": [unique[h][1] for h in hashes],
                "height": [unique[h][2] for h in hashes],
                "data": [unique[h][0] for h in hashes],
            },
            schema=IMAGES,
        )
        write_table(storage, path, table)
    for r in rows:
        r.image_shard, r.stored = name, None
    return name


# --- the run -----------------------------------------------------------------------------


def _validate_rows(df, taxonomy, source, reject) -> Iterator[_Row]:
    m = taxonomy.catalog
    seen: dict[str, tuple[int, dict, str]] = {}
    for index, rec in enumerate(df.to_dict("records")):
        pid = rec.get(m.id)
        pid = None if pid is None else str(pid).strip() or None
        if pid is None:
            reject(index, None, "validate", "missing_id", f"column {m.id!r} is empty")
            continue
        category = rec.get(m.category) if m.category else None
        category = str(category).strip() or None if category is not None else None
        try:
            labels = parse_labels(rec, taxonomy, category)
            if "{" in m.image:
                ref = m.image.format_map({k: "" if v is None else v for k, v in rec.items()})
            else:
                ref = rec.get(m.image)
            if ref is None or not str(ref).strip():
                raise LabelError("missing_image", f"column {m.image!r} is empty")
            uri = source.resolve(str(ref))
        except LabelError as e:
            reject(index, pid, "validate", e.reason, e.detail)
            continue
        if pid in seen:
            first, first_labels, first_uri = seen[pid]
            same = first_labels == labels and first_uri == uri
            reason = "duplicate_id" if same else "conflicting_duplicate"
            reject(index, pid, "validate", reason,
                   f"product id also on row {first}" + ("" if same else " with other labels or image"))
            continue
        seen[pid] = (index, labels, uri)
        yield _Row(index, pid, category, labels, uri)


def ingest_catalog(
    catalog: str,
    taxonomy: Taxonomy | str,
    lake: str,
    config: IngestConfig | None = None,
    *,
    run_id: str | None = None,
) -> IngestResult:
    """Ingest one catalog export into the lake; returns counts of what happened."""
    t0 = time.perf_counter()
    config = config or IngestConfig()
    taxonomy = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)
    run_id = run_id or f"ingest-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    storage = open_storage(lake)
    result = IngestResult(run_id=run_id, catalog=str(catalog), lake=storage.uri)
    now = datetime.now(timezone.utc)

    df = read_catalog(str(catalog))
    check_columns(df, taxonomy, str(catalog))
    # Catalog-level errors above write nothing, not even a lock. One ingest per lake at a time.
    with lake_lock(storage, "catalog", owner=run_id):
        return _ingest_rows(df, taxonomy, storage, config, result, now, t0)


def _ingest_rows(df, taxonomy, storage, config, result, now, t0) -> IngestResult:
    run_id, catalog = result.run_id, result.catalog
    result.rows = len(df)
    source = ImageSource(str(catalog))
    rejects: list[dict] = []
    bad_rows: set[int] = set()

    def reject(index, pid, stage, reason, detail):
        bad_rows.add(index)
        rejects.append(dict(run_id=run_id, rejected_at=now, source=str(catalog), row_number=index,
                            product_id=pid, stage=stage, reason=reason, detail=detail))

    previous = read_table_or_empty(storage, PRODUCTS_PATH, PRODUCTS).to_pylist()
    prev_by_id = {p["product_id"]: p for p in previous}
    known = {p["image_hash"]: p["image_shard"] for p in previous}
    rows = list(_validate_rows(df, taxonomy, source, reject))

    # Cheap change check first: same URI and same source version -> reuse hash and shard.
    versions = _source_versions(source, [r.image_uri for r in rows], config.workers)
    to_fetch = []
    for row, version in zip(rows, versions):
        row.image_version = version
        prev = prev_by_id.get(row.product_id)
        if prev and version and prev["image_uri"] == row.image_uri and prev["image_version"] == version:
            row.image_hash, row.image_shard = prev["image_hash"], prev["image_shard"]
        else:
            to_fetch.append(row)

    pending: list[_Row] = []
    bar = tqdm(total=len(to_fetch), desc="ingest images", unit="img", disable=None)
    with ThreadPoolExecutor(config.workers) as pool:
        for start in range(0, len(to_fetch), config.shard_size):
            chunk = to_fetch[start:start + config.shard_size]
            for row, bad in zip(chunk, pool.map(lambda r: _fetch(r, source, known, config), chunk)):
                result.images_fetched += 1
                if bad:
                    reject(row.index, row.product_id, *bad)
                elif row.stored is not None:
                    pending.append(row)
            bar.update(len(chunk))
            _flush(storage, pending, known, result, config.shard_size)
        _flush(storage, pending, known, result, config.shard_size, final=True)
    bar.close()

    result.rejected = len(rejects)
    for r in rejects:
        result.reject_reasons[r["reason"]] = result.reject_reasons.get(r["reason"], 0) + 1
    _write_rejects(storage, rejects)
    if result.rejected > config.max_reject_fraction * result.rows:
        raise CatalogError(
            f"{result.rejected} of {result.rows} rows were rejected ({result.reject_reasons}), more "
            f"than max_reject_fraction={config.max_reject_fraction}: the products table was not "
            f"updated. See {storage.url(REJECTS_PATH)}."
        )
    good = sorted((r for r in rows if r.index not in bad_rows), key=lambda r: r.product_id)
    # A product whose image could not be fetched this time (network, throttling) keeps its
    # previous row: a flaky night must not drop it and its tags.
    flaky = {r["product_id"] for r in rejects if r["reason"] == "fetch_error"}
    table = _products_table(good, prev_by_id, run_id, now, result)
    kept = [prev_by_id[p] for p in sorted(flaky & prev_by_id.keys())]
    if kept:
        table = pa.concat_tables([table, pa.Table.from_pylist(kept, schema=PRODUCTS)]).sort_by("product_id")
        result.unchanged += len(kept)
    result.removed = len(set(prev_by_id) - set(table["product_id"].to_pylist()))
    result.products = table.num_rows
    if not table.equals(pa.Table.from_pylist(previous, schema=PRODUCTS)):
        write_table(storage, PRODUCTS_PATH, table)
        result.products_written = True
    _write_taxonomy(storage, taxonomy)
    result.seconds = round(time.perf_counter() - t0, 3)
    log.info(
        "ingest %s: %d rows -> %d products (%d new, %d changed, %d removed), %d rejected, "
        "%d images stored in %.1fs", run_id, result.rows, result.products, result.new,
        result.changed, result.removed, result.rejected, result.images_stored, result.seconds,
    )
    return result


STAT_BATCH = 256  # local files per thread-pool task


def _source_versions(source: ImageSource, uris: list[str], workers: int) -> list[str | None]:
    """source.version of every URI, in order. S3 HEADs (a network round trip each) go to the
    pool one by one; local stats in batches of STAT_BATCH: a stat on a local disk takes
    microseconds, less than a pool hand-off (handing 20,000 single stats over cost 0.7 s),
    but one on a network file system (NFS, EFS) can take a millisecond, so they stay parallel."""
    remote = [i for i, u in enumerate(uris) if is_s3(u)]
    local = [i for i, u in enumerate(uris) if not is_s3(u)]
    tasks = [[i] for i in remote] + [local[k:k + STAT_BATCH] for k in range(0, len(local), STAT_BATCH)]
    versions: list[str | None] = [None] * len(uris)
    with ThreadPoolExecutor(workers) as pool:
        for task, found in zip(tasks, pool.map(lambda t: [source.version(uris[i]) for i in t], tasks)):
            for i, v in zip(task, found):
                versions[i] = v
    return versions


def _flush(storage: Storage, pending: list[_Row], known: dict[str, str], result: IngestResult,
           shard_size: int, final: bool = False) -> None:
    """Write shards of exactly `shard_size` distinct new images (the rest too when final)."""
    groups: dict[str, list[_Row]] = {}
    for r in pending:
        groups.setdefault(r.image_hash, []).append(r)
    hashes = list(groups)
    while len(hashes) >= shard_size or (final and hashes):
        batch, hashes = hashes[:shard_size], hashes[shard_size:]
        name = _write_shard(storage, [r for h in batch for r in groups[h]])
        known.update({h: name for h in batch})
        result.images_stored += len(batch)
        result.shards_written.append(name)
    pending[:] = [r for h in hashes for r in groups[h]]


def _products_table(good, prev_by_id, run_id, now, result) -> pa.Table:
    records = []
    for r in good:
        rec = dict(
            product_id=r.product_id, category=r.category, image_uri=r.image_uri,
            image_version=r.image_version, image_hash=r.image_hash, image_shard=r.image_shard,
            labels=sorted(r.labels.items()),
        )
        prev = prev_by_id.get(r.product_id)
        content_same = prev is not None and all(
            (sorted(prev[k]) if k == "labels" else prev[k]) == rec[k]
            for k in ("category", "image_hash", "labels")  # what tags depend on; a moved image is not a change
        )
        if prev is None:
            result.new += 1
            rec.update(first_seen=now, updated_at=now, ingest_run_id=run_id)
        elif content_same:
            result.unchanged += 1
            rec.update(first_seen=prev["first_seen"], updated_at=prev["updated_at"],
                       ingest_run_id=prev["ingest_run_id"])
        else:
            result.changed += 1
            rec.update(first_seen=prev["first_seen"], updated_at=now, ingest_run_id=run_id)
        records.append(rec)
    return pa.Table.from_pylist(records, schema=PRODUCTS)


def _write_rejects(storage: Storage, rejects: list[dict]) -> None:
    """The rejects of the latest run; not rewritten when the same rows fail the same way."""
    table = pa.Table.from_pylist(rejects, schema=REJECTS)
    old = read_table_or_empty(storage, REJECTS_PATH, REJECTS)
    stable = [c for c in REJECTS.names if c not in ("run_id", "rejected_at")]
    if old.num_rows == table.num_rows and old.select(stable).equals(table.select(stable)):
        return
    write_table(storage, REJECTS_PATH, table)


def _write_taxonomy(storage: Storage, taxonomy: Taxonomy) -> None:
    data = taxonomy.model_dump_json(indent=2).encode()
    if not storage.exists(TAXONOMY_PATH) or storage.read_bytes(TAXONOMY_PATH) != data:
        storage.write_bytes(TAXONOMY_PATH, data)
