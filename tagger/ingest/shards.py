"""New images -> image shards: fetch each changed image, hash it, normalise it once per
distinct content, and write the new ones to Parquet shards of `shard_size` images whose
names derive from their content (a re-run after a crash writes the same names).

`on_image` (ingest_catalog's hook) is handed the pixels of every image normalised now, on
the fetching thread, right after its one decode: a nightly run makes the model's input
from them instead of decoding the stored JPEG again (tagger.nightly)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from catalog_schemas.tables import IMAGES
from tagger.config import IngestConfig
from tagger.data.images import ImageError, normalise_image
from tagger.ingest.rejects import Problem
from tagger.ingest.rows import CatalogRow
from tagger.ingest.source import ImageSource, too_large_detail
from tagger.io.allocator import keep_freed_memory
from tagger.io.parquet import open_parquet_file, write_table
from tagger.io.storage import CorruptTable, Storage, TooLarge
from tagger.lake import IMAGES_PREFIX

log = logging.getLogger(__name__)

# (image hash, RGB uint8 [H, W, 3] pixels as stored, before JPEG encoding); called from the
# fetching threads, so it must be thread-safe.
OnImage = Callable[[str, np.ndarray], None]


class KnownImages:
    """image hash -> shard of the images stored already: the previous products' as a sorted
    numpy array of hashes (fixed-width bytes) and a shard code per hash (not a dict of Python
    strings), plus the ones this run stores. What fetch_image and ShardWriter look up and add to.

    The images this run stores wait in a dict only until FOLD_EVERY of them are there, then
    are inserted into the sorted arrays: a first ingest stores an image per product, and a
    dict of Python strings held every one (~190 bytes a product, ~190 MB at a million). A
    fold copies the arrays once (np.insert, ~70 bytes a product): re-sorting them in Arrow
    took several copies of hashes and shard names, ~200 MB at a million, in the middle of a
    chunk."""

    FOLD_EVERY = 65_536

    def __init__(self, hashes: pa.ChunkedArray | pa.Array, shards: pa.ChunkedArray | pa.Array):
        self._names: list[str] = []  # a few thousand shard names
        self._code_of: dict[str, int] = {}
        self._added: dict[str, str] = {}
        self._set([self._keyed(_combined(hashes), _combined(shards))])

    @classmethod
    def of_batches(cls, batches: Iterable[tuple[pa.Array, pa.Array]]) -> KnownImages:
        """From (hashes, shards) a batch at a time: the previous table's hashes are never all
        held as Arrow strings next to their numpy copy (at a million products that was about
        200 bytes a product at once, the peak of a re-ingest)."""
        known = cls(pa.array([], pa.string()), pa.array([], pa.string()))
        known._set([known._keyed(_combined(h), _combined(s)) for h, s in batches])
        return known

    def _keyed(self, hashes: pa.Array, shards: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """The hashes as fixed-width bytes (a copy, not a view of the batch) and their shards' codes."""
        encoded = pc.dictionary_encode(shards)
        codes = np.array([self._code(n) for n in encoded.dictionary.to_pylist()], np.int32)
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        return np.array(_fixed_bytes(hashes)), codes[indices] if len(codes) else indices.astype(np.int32)

    def _set(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """The (hashes, codes) parts sorted, one entry per hash: its first row's shard (as a
        lookup in table order would find). Empties `parts` once they are one array."""
        if not parts:
            parts.append((np.zeros(0, "S1"), np.zeros(0, np.int32)))
        keys, codes = np.concatenate([k for k, _ in parts]), np.concatenate([c for _, c in parts])
        parts.clear()
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.ones(len(keys), bool)
        first[1:] = keys[1:] != keys[:-1]
        codes = codes[order]
        if not first.all():  # a table names an image twice: keep its first row's
            keys, codes = keys[first], codes[first]
        self._hashes, self._codes = keys, codes.astype(np.int32)

    def _code(self, name: str) -> int:
        code = self._code_of.get(name)
        if code is None:
            code = self._code_of[name] = len(self._names)
            self._names.append(name)
        return code

    def _fold(self) -> None:
        """The added images into the sorted arrays; an added hash replaces the same hash there
        (as a lookup sees it: the added one first)."""
        keys = np.array([h.encode() for h in self._added])
        codes = np.array([self._code(s) for s in self._added.values()], np.int32)
        self._added = {}
        width = max(keys.dtype.itemsize, self._hashes.dtype.itemsize)
        if self._hashes.dtype.itemsize < width:
            self._hashes = self._hashes.astype(f"S{width}")
        order = np.argsort(keys, kind="stable")
        keys, codes = keys[order].astype(f"S{width}"), codes[order]
        at = np.searchsorted(self._hashes, keys)
        again = at < len(self._hashes)
        again[again] = self._hashes[at[again]] == keys[again]
        self._codes[at[again]] = codes[again]
        new = ~again
        self._hashes = np.insert(self._hashes, at[new], keys[new])
        self._codes = np.insert(self._codes, at[new], codes[new])

    def _find(self, image_hash: str) -> int | None:
        key = image_hash.encode()
        if len(key) > self._hashes.dtype.itemsize:
            return None
        at = int(np.searchsorted(self._hashes, key))
        return at if at < len(self._hashes) and self._hashes[at] == key else None

    def __contains__(self, image_hash: str) -> bool:
        return image_hash in self._added or self._find(image_hash) is not None

    def __getitem__(self, image_hash: str) -> str:
        if image_hash in self._added:
            return self._added[image_hash]
        at = self._find(image_hash)
        if at is None:
            raise KeyError(image_hash)
        return self._names[self._codes[at]]

    def update(self, new: dict[str, str]) -> None:
        self._added.update(new)
        if len(self._added) >= self.FOLD_EVERY:
            self._fold()


def _combined(a: pa.ChunkedArray | pa.Array) -> pa.Array:
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def _fixed_bytes(a: pa.Array) -> np.ndarray:
    """Strings as a numpy array of fixed-width bytes (UTF-8, padded). Image hashes are all
    64 hex characters: then the Arrow buffer is read as it is, no Python string made."""
    a = a.cast(pa.string())
    if len(a) and not a.null_count:
        offsets = np.frombuffer(a.buffers()[1], np.int32, count=len(a) + 1, offset=a.offset * 4)
        lengths = np.diff(offsets)
        if lengths.min() == lengths.max() > 0:
            return np.frombuffer(a.buffers()[2], f"S{lengths[0]}", count=len(a), offset=int(offsets[0]))
    return np.array([s.encode() for s in a.to_pylist()] or [b""], "S")[:len(a)]


def fetch_image(row: CatalogRow, source: ImageSource, known: dict[str, str] | KnownImages,
                config: IngestConfig, on_image: OnImage | None = None) -> Problem | None:
    """Fill in the row's hash (and its normalised image if its content is new, handed to
    `on_image` too); the problem that keeps the image out, or None."""
    keep_freed_memory()  # a photo's buffers reused for the next one, not faulted in anew
    try:
        data = source.read(row.image_uri)
    except FileNotFoundError:
        return Problem("fetch", "missing_file", f"image {row.image_uri} does not exist")
    except TooLarge as e:
        return Problem("fetch", "file_too_large", too_large_detail(row.image_uri, e))
    except IsADirectoryError:
        return Problem("fetch", "not_a_file", f"image {row.image_uri} is a directory")
    except Exception as e:  # retries are the storage layer's; what is left is a reject
        return Problem("fetch", "fetch_error", f"image {row.image_uri}: {type(e).__name__}: {e}")
    row.image_hash = hashlib.sha256(data).hexdigest()
    if row.image_hash in known:
        row.image_shard = known[row.image_hash]
        return None
    try:
        stored = normalise_image(
            data, max_side=config.image_max_side, quality=config.jpeg_quality,
            max_pixels=config.max_pixels, keep_pixels=on_image is not None,
        )
    except ImageError as e:
        return Problem("decode", e.reason, f"image {row.image_uri}: {e.detail}")
    row.stored = stored[:3]
    if on_image is not None:
        on_image(row.image_hash, stored[3])
    return None


def shard_name(hashes: Sequence[str]) -> str:
    """The name of the shard of these images: derived from their hashes alone, so a re-run
    (or another process that plans the same shard) arrives at the same name."""
    return "shard-" + hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()[:20] + ".parquet"


def write_images(storage: Storage, images: dict[str, tuple[bytes, int, int]]) -> tuple[str, bool]:
    """One Parquet shard of these normalised images (hash -> (JPEG, width, height)), sorted by
    hash. Returns (name, whether it was written now: False when it was there already)."""
    hashes = sorted(images)
    name = shard_name(hashes)
    path = f"{IMAGES_PREFIX}/{name}"
    created = not storage.exists(path)
    if created:
        table = pa.table(
            {
                "image_hash": hashes,
                "width": [images[h][1] for h in hashes],
                "height": [images[h][2] for h in hashes],
                "data": [images[h][0] for h in hashes],
            },
            schema=IMAGES,
        )
        write_table(storage, path, table)
    return name, created


def write_shard(storage: Storage, rows: Sequence[CatalogRow]) -> tuple[str, bool]:
    """One Parquet shard of the rows' new images; its name is derived from its content
    (idempotent). Returns (name, whether it was written now: False when it was there already)."""
    name, created = write_images(storage, {r.image_hash: r.stored for r in rows})
    for r in rows:
        r.image_shard, r.stored = name, None
    return name, created


def read_stored_hashes(storage: Storage) -> dict[str, str]:
    """image hash -> shard of every readable shard in the lake (what a rebuild reuses). A
    shard that cannot be read is deleted: its images are stored again from the export, and
    a shard rewritten under the same content-derived name would otherwise be skipped."""
    known: dict[str, str] = {}
    for path in storage.list(IMAGES_PREFIX):
        if not path.endswith(".parquet"):
            continue
        try:
            with open_parquet_file(storage, path) as f:
                hashes = f.read(columns=["image_hash"]).column("image_hash").to_pylist()
        except (CorruptTable, pa.ArrowException, KeyError) as e:
            log.warning("image shard %s cannot be read (%s): deleting it, its images are stored "
                        "again from the export", storage.url(path), e)
            storage.delete(path)
            continue
        known.update(dict.fromkeys(hashes, path.rsplit("/", 1)[-1]))
    return known


class ShardWriter:
    """Holds normalised new images until a shard of exactly `shard_size` distinct ones is
    full, then writes it; `known` (hash -> shard) grows with every shard written."""

    def __init__(self, storage: Storage, known: dict[str, str] | KnownImages, shard_size: int):
        self.storage, self.known, self.shard_size = storage, known, shard_size
        self.pending: list[CatalogRow] = []
        self.shards: list[str] = []
        self.created: list[str] = []  # written by this run: removed if the run fails
        self.images_stored = 0

    def add(self, row: CatalogRow) -> None:
        self.pending.append(row)

    def flush(self, final: bool = False) -> None:
        """Write every full shard (and the rest too when `final`)."""
        groups: dict[str, list[CatalogRow]] = {}
        for r in self.pending:
            groups.setdefault(r.image_hash, []).append(r)
        hashes = list(groups)
        while len(hashes) >= self.shard_size or (final and hashes):
            batch, hashes = hashes[:self.shard_size], hashes[self.shard_size:]
            name, created = write_shard(self.storage, [r for h in batch for r in groups[h]])
            if created:
                self.created.append(name)
            self.known.update({h: name for h in batch})
            self.images_stored += len(batch)
            self.shards.append(name)
        self.pending = [r for h in hashes for r in groups[h]]


def fetch_and_store(rows: Sequence[CatalogRow], source: ImageSource, writer: ShardWriter,
                    config: IngestConfig, *, final: bool = True,
                    on_image: OnImage | None = None) -> int:
    """Fetch every row's image on `config.workers` threads, a shard's worth at a time, and
    write shards as they fill up; an image that cannot be ingested gets its `problem`.
    Returns the number of images fetched. `final`: write the last, partial shard too (not
    between the chunks of one export: its shards then come out as they would from one chunk)."""
    fetched = 0
    bar = tqdm(total=len(rows), desc="ingest images", unit="img", disable=None)
    with ThreadPoolExecutor(config.workers) as pool:
        for start in range(0, len(rows), config.shard_size):
            chunk = rows[start:start + config.shard_size]
            problems = pool.map(lambda r: fetch_image(r, source, writer.known, config, on_image), chunk)
            for row, problem in zip(chunk, problems):
                fetched += 1
                row.problem = problem
                if problem is None and row.stored is not None:
                    writer.add(row)
            bar.update(len(chunk))
            writer.flush()
        writer.flush(final=final)
    bar.close()
    return fetched
