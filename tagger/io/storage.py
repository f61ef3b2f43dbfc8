"""One way to read and write files under a root URI: a local folder or s3://bucket/prefix.

Only this room (tagger/io) knows which of the two a root is: `Storage` is the interface,
`LocalStorage` the folder, `tagger.io.s3.S3Storage` the bucket. Every write is atomic: a
reader sees the old file or the new one, never a part. Locally a file is written under a
hidden temporary name in the same folder and renamed (or linked) into place; on S3 an
object only appears when its PUT (or multipart upload) completes. Hidden names start with
'.', which DuckDB globs, pyarrow datasets and Spark all skip.

Parquet tables over a storage are tagger.io.parquet's (its names are importable from here
too). Besides plain reads and writes, a `Storage` offers what a lock needs from it: create a
file only if it is absent, replace it only if it is still the version that was read, and
read it together with that version; and a read bounded in size, refused before the bytes
are read, for files whose size a merchant controls.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# The Parquet helpers live in tagger.io.parquet; they stay importable from here.
from tagger.io.parquet import (
    PARQUET_OPTIONS,
    ROW_GROUP_ROWS,
    read_table,
    read_table_or_empty,
    read_tables,
    write_table,
)

log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """A read or write that failed; the message names the URI.

    `retryable` says whether the same request can succeed on another try (a throttled or
    unreachable endpoint) or not (a bad path, a denied request, a missing bucket). It is
    set where the error is translated, so callers decide retries without knowing the backend.
    """

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class TooLarge(StorageError):
    """A bounded read refused before reading: the file has `size` bytes, over `limit`."""

    def __init__(self, uri: str, size: int, limit: int):
        super().__init__(f"{uri} has {size} bytes, over the limit of {limit} bytes")
        self.uri, self.size, self.limit = uri, size, limit

    def __reduce__(self):  # pickled by process pools and Prefect: rebuild from the fields
        return type(self), (self.uri, self.size, self.limit)


def is_s3(uri: str) -> bool:
    """Whether `uri` names an S3 object or prefix (s3://...) rather than a local path."""
    return str(uri).startswith("s3://")


class Storage(ABC):
    """Files under a root URI. Paths are '/'-separated and relative to the root."""

    uri: str

    def url(self, path: str = "") -> str:
        return f"{self.uri.rstrip('/')}/{path}" if path else self.uri

    @abstractmethod
    def read_bytes(self, path: str, max_bytes: int | None = None) -> bytes:
        """The file's bytes; FileNotFoundError if absent. With `max_bytes`, a larger file is
        refused with TooLarge before its content is read."""

    @abstractmethod
    def read_with_version(self, path: str) -> tuple[bytes, str] | None:
        """(bytes, version) of one and the same state of the file; None if absent."""

    @abstractmethod
    def write_bytes(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def create_if_absent(self, path: str, data: bytes) -> bool:
        """Write the file only if nothing is there; False (nothing written) if something is."""

    @abstractmethod
    def replace_if(self, path: str, data: bytes, version: str) -> bool:
        """Replace the file only if it is still at `version` (from `version` or
        `read_with_version`); False (nothing written) if it changed or is gone."""

    @abstractmethod
    def upload(self, local_file: Path, path: str) -> None: ...

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]: ...

    @abstractmethod
    def delete(self, path: str) -> None: ...

    @abstractmethod
    def version(self, path: str) -> str | None:
        """A cheap change key (size and mtime locally, the ETag on S3); None if absent."""

    @abstractmethod
    @contextmanager
    def local_copy(self, path: str) -> Iterator[Path]:
        """A local file with the content of `path` for libraries that need a file name."""

    def local_path(self, path: str) -> Path | None:
        """The file's path on this machine's file system, or None where it has none (S3):
        what a kernel lock (flock) needs."""
        return None

    def delete_prefix(self, prefix: str) -> int:
        paths = self.list(prefix)
        for p in paths:
            self.delete(p)
        return len(paths)


# --- local files ---------------------------------------------------------------------------


def _stat_version(st: os.stat_result) -> str:
    return f"{st.st_size}-{st.st_mtime_ns}"


def _read_bounded(f: BinaryIO, uri: str, max_bytes: int | None) -> bytes:
    """Read an open file whole, or refuse with TooLarge before reading past `max_bytes`
    (fstat first; then at most max_bytes + 1 bytes, in case it grew since)."""
    if max_bytes is None:
        return f.read()
    size = os.fstat(f.fileno()).st_size
    if size > max_bytes:
        raise TooLarge(uri, size, max_bytes)
    data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(uri, len(data), max_bytes)
    return data


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        root = str(root)
        if root.startswith("file://"):
            root = root[len("file://"):]
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, path: str) -> Path:
        full = (self.root / path).resolve()
        if full != self.root and self.root not in full.parents:
            raise StorageError(f"Path {path!r} escapes the root {self.uri}")
        return full

    def local_path(self, path: str) -> Path:
        return self._path(path)

    def read_bytes(self, path: str, max_bytes: int | None = None) -> bytes:
        try:
            with open(self._path(path), "rb") as f:
                return _read_bounded(f, self.url(path), max_bytes)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url(path)} does not exist") from None

    def read_with_version(self, path: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(path), "rb") as f:
                return f.read(), _stat_version(os.fstat(f.fileno()))
        except FileNotFoundError:
            return None

    @contextmanager
    def _staged(self, write: Callable[[Path], object], path: str) -> Iterator[tuple[Path, Path]]:
        """(temporary file holding the new content, target) for a commit step; the
        temporary file is always removed afterwards."""
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            yield tmp, target
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(self, write: Callable[[Path], object], path: str) -> None:
        with self._staged(write, path) as (tmp, target):
            os.replace(tmp, target)

    def write_bytes(self, path: str, data: bytes) -> None:
        self._commit(lambda tmp: tmp.write_bytes(data), path)

    def upload(self, local_file: Path, path: str) -> None:
        self._commit(lambda tmp: shutil.copyfile(local_file, tmp), path)

    def create_if_absent(self, path: str, data: bytes) -> bool:
        # link() of the finished temporary file fails if the name exists, and a reader
        # never sees a part: O_EXCL and then writing would show an empty or half file.
        with self._staged(lambda tmp: tmp.write_bytes(data), path) as (tmp, target):
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            except OSError as e:  # a file system without hard links (FAT, some FUSE mounts)
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                return self._create_exclusive(target, data)
        return True

    @staticmethod
    def _create_exclusive(target: Path, data: bytes) -> bool:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def replace_if(self, path: str, data: bytes, version: str) -> bool:
        # Comparing and renaming are two steps. A short flock on the file being replaced
        # makes them one for every other replace_if: a second caller that waited on the same
        # file then finds the name pointing at the new file, whose version differs. Readers
        # never wait (rename is atomic) and the kernel drops the flock if the process dies.
        # The version is size and mtime: two writes of equal size within one clock tick of
        # the file system look the same, as they do to `version`.
        with self._staged(lambda tmp: tmp.write_bytes(data), path) as (tmp, target):
            try:
                fd = os.open(target, os.O_RDONLY)
            except FileNotFoundError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _stat_version(os.fstat(fd)) != version or not _same_file(fd, target):
                    return False
                os.replace(tmp, target)
            finally:
                os.close(fd)
        return True

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith("."):
                    out.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(out)

    def delete(self, path: str) -> None:
        self._path(path).unlink(missing_ok=True)

    def version(self, path: str) -> str | None:
        try:
            return _stat_version(self._path(path).stat())
        except FileNotFoundError:
            return None

    @contextmanager
    def local_copy(self, path: str) -> Iterator[Path]:
        yield self._path(path)


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (not replaced since it was opened)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


# --- opening a root or a file ---------------------------------------------------------------


def open_storage(uri: str | Path) -> Storage:
    """The storage for a root URI: `s3://bucket/prefix` or a local folder."""
    if is_s3(str(uri)):
        from tagger.io.s3 import S3Storage  # here: s3.py builds on this module

        return S3Storage(str(uri))
    return LocalStorage(uri)


def open_file(uri: str | Path) -> tuple[Storage, str]:
    """(storage of the parent, name) for a single file URI, local or S3."""
    uri = str(uri)
    if is_s3(uri):
        parent, _, name = uri.rpartition("/")
        return open_storage(parent), name
    path = Path(uri).expanduser().resolve()
    return LocalStorage(path.parent), path.name


class FileReader:
    """Reads single files named by s3:// URIs or local paths, such as a catalog's images.

    S3 files are read through one storage per bucket, kept for the reader's life (one
    client and its connection pool for a run, not one per file). Local paths are taken as
    they are, without resolving them again: the caller has resolved and checked them, and
    a nightly re-ingest asks for the version of every image (one stat each)."""

    def __init__(self) -> None:
        self._buckets: dict[str, Storage] = {}

    def _s3(self, uri: str) -> tuple[Storage, str]:
        bucket, _, key = uri[len("s3://"):].partition("/")
        storage = self._buckets.get(bucket)
        if storage is None:
            storage = self._buckets.setdefault(bucket, open_storage(f"s3://{bucket}"))
        return storage, key

    def read_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        """The file's bytes; `max_bytes` as in `Storage.read_bytes`."""
        if is_s3(uri):
            storage, key = self._s3(uri)
            return storage.read_bytes(key, max_bytes)
        try:
            with open(uri, "rb") as f:
                return _read_bounded(f, uri, max_bytes)
        except FileNotFoundError:
            raise FileNotFoundError(f"{uri} does not exist") from None

    def version(self, uri: str) -> str | None:
        """`Storage.version` of the file; None if absent."""
        if is_s3(uri):
            storage, key = self._s3(uri)
            return storage.version(key)
        try:
            return _stat_version(os.stat(uri))
        except FileNotFoundError:
            return None


__all__ = [
    "FileReader", "LocalStorage", "Storage", "StorageError", "TooLarge", "is_s3", "open_file",
    "open_storage", "PARQUET_OPTIONS", "ROW_GROUP_ROWS", "read_table", "read_table_or_empty",
    "read_tables", "write_table",
]
