"""Lake tables read as sorted streams: batches in product id order, and the few operations a
tag run merges such streams with, so it never holds a whole table.

The products, state and latest tables are sorted by product id (tag runs and ingests write
them so) and written in row groups of ROW_GROUP_ROWS rows. A streamed read decodes one row
group at a time, so reading BATCH_ROWS rows at once bounds what a run holds whatever the
catalog size. A table that is not sorted (written by another tool) raises Unsorted from
sorted_batches, and the caller falls back to reading it whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tagger.io.storage import ROW_GROUP_ROWS, Storage, open_parquet_file

# Rows of a lake table a tag run reads at once (products, state, the previous latest) and
# the row groups it writes the latest table in. One row group per batch; the benchmarks set
# it lower (--latest-batch-rows) so that small catalogs are merged in many pieces too. Read
# it as `streams.BATCH_ROWS` at call time, never imported by name, so that setting it works.
BATCH_ROWS = ROW_GROUP_ROWS


class Unsorted(Exception):
    """A table that should be sorted by product id is not (not written by us)."""


@contextmanager
def open_parquet(storage: Storage, path: str) -> Iterator[pq.ParquetFile | None]:
    """A lake table as an open Parquet file (None when it does not exist yet)."""
    if not storage.exists(path):
        yield None
        return
    with open_parquet_file(storage, path) as f:  # CorruptTable names the file and the remedy
        yield f


def sorted_batches(f: pq.ParquetFile | None, schema: pa.Schema) -> Iterator[pa.Table]:
    """`schema`'s columns of f in batches of BATCH_ROWS rows; Unsorted when the rows are not
    in product id order."""
    last = None
    # nullable columns a table written by an older version lacks (products' text) read as null
    absent = [] if f is None else [schema.field(n) for n in schema.names
                                   if n not in f.schema_arrow.names and schema.field(n).nullable]
    for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=schema.names) if f is not None else ():
        if not batch.num_rows:
            continue
        t = pa.Table.from_batches([batch])
        for field in absent:
            t = t.append_column(field, pa.nulls(t.num_rows, field.type))
        t = t.select(schema.names).cast(schema)
        ids = t["product_id"]
        if (last is not None and ids[0].as_py() < last) or (
                len(ids) > 1 and pc.any(pc.less(ids[1:], ids[:-1])).as_py()):
            raise Unsorted
        last = ids[-1].as_py()
        yield t


def bisect_ids(ids: pa.Array, x: str, lo: int = 0, right: bool = True) -> int:
    """bisect.bisect_right (bisect_left with right=False) over a sorted Arrow string array."""
    hi = len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        v = ids[mid].as_py()
        if x < v or (not right and x == v):
            hi = mid
        else:
            lo = mid + 1
    return lo


def sorted_unique(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The distinct values, sorted (a set `member` can search by range); values that already
    are (a scan's ids) are returned as they are, without a hash table and a copy."""
    if isinstance(values, pa.Array) and (len(values) < 2 or pc.all(pc.less(values[:-1], values[1:])).as_py()):
        return values
    u = pc.unique(values)
    return u.take(pc.sort_indices(u))


def member(pid: pa.ChunkedArray, sorted_set: pa.Array) -> pa.ChunkedArray:
    """pid in sorted_set, looking only at the slice of the set within pid's range when pid
    is sorted (the latest table is): O(batch + slice) per batch, not O(set)."""
    if len(pid) and pc.all(pc.less_equal(pid[:-1], pid[1:])).as_py() is not False:
        lo = bisect_ids(sorted_set, pid[0].as_py(), right=False)
        sorted_set = sorted_set.slice(lo, bisect_ids(sorted_set, pid[-1].as_py(), lo) - lo)
    return pc.is_in(pid, value_set=sorted_set)


class Upto:
    """Rows of sorted batches handed out in product id order: upto(pid) gives the rows not
    handed out yet whose product id is <= pid."""

    def __init__(self, batches: Iterator[pa.Table], schema: pa.Schema):
        self._batches, self._buf, self._more = batches, schema.empty_table(), True

    def upto(self, pid: str) -> pa.Table:
        """The next rows, up to and including product id `pid`."""
        while self._more and (not self._buf.num_rows or self._buf["product_id"][-1].as_py() <= pid):
            batch = next(self._batches, None)
            if batch is None:
                self._more = False
            else:
                self._buf = pa.concat_tables([self._buf, batch])
        k = bisect_ids(self._buf["product_id"], pid)
        out, self._buf = self._buf.slice(0, k), self._buf.slice(k)
        return out

    def drain(self) -> Iterator[pa.Table]:
        """The rows not handed out yet, a batch at a time."""
        if self._buf.num_rows:
            yield self._buf
        self._buf = self._buf.slice(0, 0)
        while self._more:
            batch = next(self._batches, None)
            if batch is None:
                self._more = False
            elif batch.num_rows:
                yield batch
