"""Parquet tables over a `Storage`: every table file written atomically, zstd-compressed, in
row groups a streaming reader can take one at a time; read back cast to its schema."""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path
import pyarrow as pa
import pyarrow.parquet as pq

from tagger.io.base import Storage

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
        pq.write_table(table, local, row_group_size=ROW_GROUP_ROWS, **PARQUET_OPTIONS)
        storage.upload(local, path)
    log.info("wrote %d rows to %s", table.num_rows, storage.url(path))


def read_table(storage: Storage, path: str, schema: pa.Schema | None = None,
               defaults: dict | None = None) -> pa.Table:
    """Read one Parquet file; cast to `schema` when given (column order and types).
    `defaults`: values for columns that files written by older versions lack."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
    for name, value in (defaults or {}).items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows,
                                                       type=schema.field(name).type))
    return table.select(schema.names).cast(schema) if schema is not None else table


def read_tables(storage: Storage, prefix: str, schema: pa.Schema) -> pa.Table:
    """Concatenate every Parquet file under `prefix` (empty table with `schema` if none)."""
    parts = [read_table(storage, p, schema) for p in storage.list(prefix) if p.endswith(".parquet")]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def read_table_or_empty(storage: Storage, path: str, schema: pa.Schema,
                        defaults: dict | None = None) -> pa.Table:
    """`read_table`, or an empty table with `schema` when the file does not exist."""
    return read_table(storage, path, schema, defaults) if storage.exists(path) else schema.empty_table()
