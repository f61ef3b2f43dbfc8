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

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


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
    data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(uri, len(data), max_bytes)
    return data
