"""One way to read and write files under a root URI: a local folder or s3://bucket/prefix.

Only this room (tagger/io) knows which of the two a root is: open_storage gives the
`Storage` (tagger/io/base.py) of a root, open_file that of a single file's folder, and
FileReader reads single files by URI (a catalog's images). The backends are
tagger/io/local.py and tagger/io/s3.py; Parquet tables over a storage are tagger/io/parquet.py.
Their names are importable from here, the room's front door.
"""

from __future__ import annotations

import os
from pathlib import Path

from tagger.io.base import (
    CorruptTable,
    Storage,
    StorageError,
    TooLarge,
    is_s3,
    read_bounded,
    stat_version,
)
from tagger.io.local import LocalStorage
from tagger.io.parquet import (
    PARQUET_OPTIONS,
    ROW_GROUP_ROWS,
    RowGroupWriter,
    corrupt_table,
    open_parquet_file,
    read_table,
    read_table_or_empty,
    read_tables,
    write_table,
)
from tagger.io.s3 import S3Storage


def open_storage(uri: str | Path) -> Storage:
    """The storage for a root URI: `s3://bucket/prefix` or a local folder."""
    return S3Storage(str(uri)) if is_s3(str(uri)) else LocalStorage(uri)


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
                return read_bounded(f, uri, max_bytes)
        except FileNotFoundError:
            raise FileNotFoundError(f"{uri} does not exist") from None

    def version(self, uri: str) -> str | None:
        """`Storage.version` of the file; None if absent."""
        if is_s3(uri):
            storage, key = self._s3(uri)
            return storage.version(key)
        try:
            return stat_version(os.stat(uri))
        except FileNotFoundError:
            return None


__all__ = [
    "CorruptTable", "corrupt_table", "open_parquet_file",
    "FileReader", "LocalStorage", "S3Storage", "Storage", "StorageError", "TooLarge", "is_s3",
    "open_file", "open_storage", "PARQUET_OPTIONS", "ROW_GROUP_ROWS", "RowGroupWriter", "read_table",
    "read_table_or_empty", "read_tables", "write_table",
]
