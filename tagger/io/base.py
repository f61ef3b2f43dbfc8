"""The storage interface: files under a root URI, the errors of reading and writing them.

`Storage` is what every backend implements (tagger/io/local.py: a folder, tagger/io/s3.py: a
bucket); the rest of the package opens one with tagger.io.storage.open_storage and never
asks which it got. Every write is atomic: a reader sees the old file or the new one, never a
part. Hidden names start with '.', which DuckDB globs, pyarrow datasets and Spark all skip.

Besides plain reads and writes, a `Storage` offers what a lock needs from it: create a file
only if it is absent, replace it only if it is still the version that was read, and read it
together with that version; and a read bounded in size, refused before the bytes are read,
for files whose size a merchant controls.
"""

from __future__ import annotations

import errno
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class FileInfo:
    """A file's size in bytes and when it was last written (UTC)."""

    size: int
    modified: datetime


class StorageError(RuntimeError):
    """A read or write that failed; the message names the URI.

    `retryable` says whether the same request can succeed on another try (a throttled or
    unreachable endpoint) or not (a bad path, a denied request, a missing bucket). It is
    set where the error is translated, so callers decide retries without knowing the backend.
    """

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


# What a person can do when the lake's disk refuses, by errno: these fail the same way on
# every retry until someone acts, so the error says what to do and is not retried.
DISK_FULL = ("free space (tagger vacuum --lake LAKE reclaims unreferenced image shards, "
             "finished checkpoints and old tag history) or move the lake to a bigger disk, then re-run")
OS_HINTS = {
    errno.ENOSPC: "the disk is full: " + DISK_FULL,
    errno.EDQUOT: "the disk quota is used up: " + DISK_FULL,
    errno.EACCES: "permission denied: give the user that runs tagger write access to the lake "
                  "(chown/chmod), or run as the lake's owner",
    errno.EPERM: "operation not permitted: give the user that runs tagger write access to the "
                 "lake (chown/chmod, no immutable flag), or run as the lake's owner",
    errno.EROFS: "the file system is read-only: remount it read-write, or point --lake at a writable folder",
    errno.EIO: "the disk reported an I/O error: check it (dmesg, fsck, the NFS server), then re-run; "
               "restore any file named as damaged from a backup",
}


def os_errno(e: OSError) -> int | None:
    """The errno of an OSError; pyarrow's keep it only in the message ('[errno 28] ...')."""
    if e.errno is not None:
        return e.errno
    found = re.search(r"\[errno (\d+)\]", str(e), re.IGNORECASE)
    return int(found.group(1)) if found else None


def storage_error(e: OSError, what: str, url: str) -> StorageError | None:
    """`e` as one line naming the file and what to do, where its errno has a hint; else None."""
    code = os_errno(e)
    if code not in OS_HINTS:
        return None
    reason = e.strerror or os.strerror(code)
    return StorageError(f"Could not {what} {url}: {reason} [{errno.errorcode[code]}]; {OS_HINTS[code]}.")

class TooLarge(StorageError):
    """A bounded read refused before reading: the file has `size` bytes, over `limit`."""

    def __init__(self, uri: str, size: int, limit: int):
        super().__init__(f"{uri} has {size} bytes, over the limit of {limit} bytes")
        self.uri, self.size, self.limit = uri, size, limit

    def __reduce__(self):  # pickled by process pools and Prefect: rebuild from the fields
        return type(self), (self.uri, self.size, self.limit)

class CorruptTable(ValueError):
    """A lake file that is there but cannot be read as what it should be (a truncated copy,
    another tool's file): the message names its URL and how to rebuild it."""

    def __init__(self, url: str, detail: str, remedy: str):
        super().__init__(f"{url} is damaged or not a table of this lake ({detail}). {remedy}")
        self.url, self.detail, self.remedy = url, detail, remedy

    def __reduce__(self):  # pickled by process pools and Prefect: rebuild from the fields
        return type(self), (self.url, self.detail, self.remedy)


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

    def info(self, path: str) -> FileInfo | None:
        """Size and last modification of the file; None if absent (what vacuum's grace needs)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement info()")

    def local_path(self, path: str) -> Path | None:
        """The file's path on this machine's file system, or None where it has none (S3):
        what a kernel lock (flock) needs."""
        return None

    def presigned_url(self, path: str, expires_s: int) -> str | None:
        """A URL anyone holding it may GET the file from for `expires_s` seconds (S3), or
        None where the storage has no such URL (a local folder): what a review tool shows."""
        return None

    def delete_prefix(self, prefix: str) -> int:
        paths = self.list(prefix)
        for p in paths:
            self.delete(p)
        return len(paths)


def stat_version(st: os.stat_result) -> str:
    """The version of a local file: size and modification time."""
    return f"{st.st_size}-{st.st_mtime_ns}"


def read_bounded(f: BinaryIO, uri: str, max_bytes: int | None) -> bytes:
    """Read an open file whole, or refuse with TooLarge before reading past `max_bytes`
    (fstat first; then at most max_bytes + 1 bytes, in case it grew since)."""
    if max_bytes is None:
        return f.read()
    size = os.fstat(f.fileno()).st_size
    if size > max_bytes:
        raise TooLarge(uri, size, max_bytes)
    # read(n) allocates n bytes before it reads: ask for the size, not the limit (a 64 MB
    # buffer per photo was a third of the cost of reading it); a byte more shows growth
    data = f.read(size + 1)
    if len(data) > size:
        data += f.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:
        raise TooLarge(uri, len(data), max_bytes)
    return data
