"""Parquet tables over a `Storage`: every table file written atomically, zstd-compressed, in
row groups a streaming reader can take one at a time; read back cast to its schema."""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tagger.io.base import CorruptTable, Storage, storage_error

log = logging.getLogger(__name__)

PARQUET_OPTIONS = dict(compression="zstd", write_statistics=True)
# Rows per row group of the tables write_table writes: a reader that streams a table (a tag
# run reads products and state in batches) decodes one row group at a time, so this bounds
# its memory whatever the catalog size; BI engines read such groups in parallel.
ROW_GROUP_ROWS = 16_384


def write_table(storage: Storage, path: str, table: pa.Table) -> None:
    """Write one Parquet file atomically and log its row count and URI."""
    with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        local = Path(tmp) / "part.parquet"
        try:
            pq.write_table(table, local, row_group_size=ROW_GROUP_ROWS, **PARQUET_OPTIONS)
        except OSError as e:  # the machine's temporary folder, not the lake (TMPDIR moves it)
            error = storage_error(e, "write the temporary copy of", f"{storage.url(path)} at {local}")
            if error is None:
                raise
            raise error from e
        storage.upload(local, path)
    log.info("wrote %d rows to %s", table.num_rows, storage.url(path))


class RowGroupWriter:
    """A local Parquet file written a part at a time, in row groups of ROW_GROUP_ROWS rows
    (write_table's layout), holding at most one row group of rows: a table too big to hold
    is streamed into it, then uploaded (Storage.upload commits it atomically)."""

    def __init__(self, local: Path, schema: pa.Schema, row_group_rows: int | None = None):
        self.schema, self.rows = schema, 0
        self.row_group_rows = row_group_rows or ROW_GROUP_ROWS  # read now: tests set it lower
        self._writer = pq.ParquetWriter(local, schema, **PARQUET_OPTIONS)
        self._buf: list[pa.Table] = []
        self._held = 0

    def write(self, table: pa.Table) -> None:
        """Add rows (`schema`'s columns); full row groups are written out at once."""
        if not table.num_rows:
            return
        self._buf.append(table.select(self.schema.names).cast(self.schema))
        self._held += table.num_rows
        self.rows += table.num_rows
        if self._held >= self.row_group_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        held = pa.concat_tables(self._buf) if self._buf else self.schema.empty_table()
        full = held.num_rows if final else held.num_rows - held.num_rows % self.row_group_rows
        if full:
            self._writer.write_table(held.slice(0, full), row_group_size=self.row_group_rows)
        rest = held.slice(full)
        self._buf, self._held = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        self._flush(final=True)
        self._writer.close()

    def __enter__(self) -> RowGroupWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_table(storage: Storage, path: str, schema: pa.Schema | None = None,
               defaults: dict | None = None) -> pa.Table:
    """Read one Parquet file; cast to `schema` when given (column order and types).
    `defaults`: values for columns that files written by older versions lack."""
    data = storage.read_bytes(path)
    try:
        table = pq.read_table(io.BytesIO(data))
        for name, value in (defaults or {}).items():
            # a default only for a column asked for: a reader of some columns (the tag
            # run's) must not trip over a newer column that an older table lacks
            if name in table.column_names or (schema is not None and name not in schema.names):
                continue
            kind = schema.field(name).type if schema is not None else None
            table = table.append_column(name, pa.array([value] * table.num_rows, type=kind))
        return table.select(schema.names).cast(schema) if schema is not None else table
    except (pa.ArrowException, KeyError) as e:  # not Parquet, truncated, or other columns
        raise corrupt_table(storage, path, e) from None


@contextmanager
def open_parquet_file(storage: Storage, path: str) -> Iterator[pq.ParquetFile]:
    """A lake table as an open Parquet file for streamed reads (CorruptTable if it is not one)."""
    with storage.local_copy(path) as local:
        try:
            f = pq.ParquetFile(local)
        except pa.ArrowException as e:
            raise corrupt_table(storage, path, e) from None
        with f:
            yield f


# How to rebuild a damaged file, by path prefix (the most specific wins). The lake's layout
# is tagger.lake's, a room above this one: it registers its tables here.
_REMEDIES: dict[str, str] = {}
DEFAULT_REMEDY = "Restore it from a backup, or delete it and re-run the step that writes it."


def register_remedy(prefix: str, remedy: str) -> None:
    """How to recover a damaged file under `prefix`; `{lake}` is replaced by the lake's root."""
    _REMEDIES[prefix] = remedy


def corrupt_table(storage: Storage, path: str, error: BaseException) -> CorruptTable:
    """The CorruptTable of `path`, with the remedy registered for its prefix."""
    prefix = max((p for p in _REMEDIES if path.startswith(p)), key=len, default=None)
    remedy = _REMEDIES[prefix].format(lake=storage.uri) if prefix is not None else DEFAULT_REMEDY
    detail = " ".join(f"{type(error).__name__}: {error}".split())[:300]  # one line
    return CorruptTable(storage.url(path), detail, remedy)


def read_tables(storage: Storage, prefix: str, schema: pa.Schema) -> pa.Table:
    """Concatenate every Parquet file under `prefix` (empty table with `schema` if none)."""
    parts = [read_table(storage, p, schema) for p in storage.list(prefix) if p.endswith(".parquet")]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def read_table_or_empty(storage: Storage, path: str, schema: pa.Schema,
                        defaults: dict | None = None) -> pa.Table:
    """`read_table`, or an empty table with `schema` when the file does not exist."""
    return read_table(storage, path, schema, defaults) if storage.exists(path) else schema.empty_table()
