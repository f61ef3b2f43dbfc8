"""Where a catalog's images come from: references resolved against the catalog's folder (or
S3 prefix), a cheap change key per image, and reads bounded in size, all through tagger.io."""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from tagger.io.storage import FileReader, TooLarge, is_s3
from tagger.labels import LabelError

MAX_IMAGE_BYTES = 64 * 2**20  # a product photo is a few MB; anything bigger is refused unread
STAT_BATCH = 256  # local files per thread-pool task (see read_versions)
PARALLEL_STAT_SECONDS = 50e-6  # a local stat slower than this goes to the thread pool


class ImageSource:
    """Reads source images named by local paths or s3:// URIs (thread-safe)."""

    def __init__(self, catalog_uri: str, roots: Sequence[str] = ()):
        self.base = catalog_uri.rsplit("/", 1)[0] if is_s3(catalog_uri) else os.path.dirname(
            os.path.abspath(catalog_uri)
        )
        # Where the folders really are: a catalog in a symlinked folder (/tmp -> /private/tmp)
        # names images that are inside it once both are resolved. The operator's roots
        # (IngestConfig.image_roots) are resolved the same way, once.
        self._real_base = self.base if is_s3(self.base) else os.path.realpath(self.base)
        self._local_roots = [self._real_base] if not is_s3(self.base) else []
        self._local_roots += [os.path.realpath(os.path.expanduser(r)) for r in roots if not is_s3(r)]
        self._s3_roots = [self.base] if is_s3(self.base) else []
        self._s3_roots += [r.rstrip("/") for r in roots if is_s3(r)]
        self._real_dirs: dict[str, str] = {}  # realpath per folder: catalogs name few of them
        self._files = FileReader()

    @property
    def real_base(self) -> str:
        """The catalog's folder with its links resolved (its prefix on S3)."""
        return self._real_base

    def resolve(self, ref: str) -> str:
        """Absolute URI of an image reference; relative ones may not leave the catalog's folder."""
        ref = ref.strip()
        if ref.startswith("file://"):
            raise LabelError("bad_image_uri", f"file:// URIs are not accepted: {ref!r}; use a path")
        if is_s3(ref):
            return ref
        if "://" in ref:
            raise LabelError("bad_image_uri", f"unsupported URI scheme in {ref!r}; use a path or s3://")
        if is_s3(self.base) and not ref.startswith("/"):
            uri = "s3://" + posixpath.normpath(f"{self.base}/{ref}".removeprefix("s3://"))
            if ".." in ref.split("/") and not _inside(uri, self._s3_roots, "/"):
                raise LabelError("image_outside_root", f"{ref!r} leaves the catalog's prefix"
                                 f"{_roots_hint(self._s3_roots)}")
            return uri if ".." in ref.split("/") else f"{self.base}/{ref}"
        path = self._realpath(os.path.join(self.base, ref))
        self._check_inside(ref, path)
        return path

    def resolve_plainly(self, ref: str) -> tuple[str, bool]:
        """resolve(ref), and whether it followed no symbolic link below the catalog's
        folder: a re-ingest may take such a reference's row as it was (tagger.ingest.unchanged),
        while a link, which can be re-pointed without any file changing, is resolved anew."""
        uri = self.resolve(ref)
        if is_s3(uri):
            return uri, True
        return uri, uri == os.path.normpath(os.path.join(self._real_base, ref.strip()))

    def _check_inside(self, ref: str, path: str) -> None:
        if not _inside(path, self._local_roots, os.sep):
            where = f"the catalog folder {self.base}" if not is_s3(self.base) else "every image root"
            raise LabelError("image_outside_root", f"{ref!r} resolves to {path}, outside {where}"
                             f"{_roots_hint(self._local_roots)}")

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
        """The image's change key (size+mtime, or the ETag); None when unknown."""
        try:
            return self._files.version(uri)
        except Exception:
            return None  # unknown: the image is read and hashed

    def read(self, uri: str) -> bytes:
        """The file's bytes; a file over MAX_IMAGE_BYTES is refused (TooLarge) before it is
        read, so memory stays bounded by workers x MAX_IMAGE_BYTES whatever the source holds."""
        return self._files.read_bytes(uri, max_bytes=MAX_IMAGE_BYTES)  # read now: tests lower it


def _inside(path: str, roots: Sequence[str], sep: str) -> bool:
    """Whether `path` is one of `roots` or below one (whole path segments: /a/bc is not in /a/b)."""
    return any(path == r or path.startswith(r.rstrip(sep) + sep) for r in roots)


def _roots_hint(roots: Sequence[str]) -> str:
    return (f" (allowed roots: {', '.join(roots)})" if len(roots) > 1 else
            "; an operator can allow another folder or prefix with --image-root (IngestConfig.image_roots)")


def too_large_detail(uri: str, error: TooLarge) -> str:
    """The rejects table's sentence for an image refused by its size."""
    return (f"image {uri} is {error.size / 1e6:.0f} MB, over the {error.limit / 1e6:.0f} MB "
            "limit for a product photo; export a smaller rendition")


class _Versioned(Protocol):
    def version(self, uri: str) -> str | None: ...


def read_versions(source: _Versioned, uris: Sequence[str], workers: int) -> list[str | None]:
    """source.version of every URI, in order. S3 HEADs (a network round trip each) go to the
    pool one by one. Local stats run in this thread while they are fast: a stat on a local
    disk takes about 4 us, and eight threads contending for the GIL made each one 10 us. The
    first STAT_BATCH are timed; slower than PARALLEL_STAT_SECONDS each (a network file system,
    NFS or EFS, can take a millisecond) and the rest go to the pool in batches of STAT_BATCH."""
    remote = [i for i, u in enumerate(uris) if is_s3(u)]
    local = [i for i, u in enumerate(uris) if not is_s3(u)]
    versions: list[str | None] = [None] * len(uris)
    t0 = time.perf_counter()
    for i in local[:STAT_BATCH]:
        versions[i] = source.version(uris[i])
    slow = (time.perf_counter() - t0) > PARALLEL_STAT_SECONDS * min(len(local), STAT_BATCH)
    rest = local[STAT_BATCH:]
    if not slow:
        for i in rest:
            versions[i] = source.version(uris[i])
        rest = []
    tasks = [[i] for i in remote] + [rest[k:k + STAT_BATCH] for k in range(0, len(rest), STAT_BATCH)]
    if tasks:
        with ThreadPoolExecutor(workers) as pool:
            for task, found in zip(tasks, pool.map(lambda t: [source.version(uris[i]) for i in t], tasks)):
                for i, v in zip(task, found):
                    versions[i] = v
    return versions
