"""Storage errors a person can act on: one line naming the file and what to do, not retried."""

from __future__ import annotations

import errno
import io

import pyarrow as pa
import pytest
from botocore.exceptions import ClientError

from tagger.io import local
from tagger.io.storage import CorruptTable, S3Storage, StorageError, open_storage, read_table, write_table


class RefusingClient:
    """An S3 client double whose PUTs fail with one S3 error code."""

    def __init__(self, code: str, status: int):
        self.code, self.status = code, status

    def put_object(self, **kw):
        raise ClientError({"Error": {"Code": self.code, "Message": "refused"},
                           "ResponseMetadata": {"HTTPStatusCode": self.status}}, "PutObject")


@pytest.mark.parametrize("code, status, hint", [
    ("EntityTooLarge", 400, "lower IngestConfig.shard_size (--shard-size)"),
    ("QuotaExceeded", 403, "quota or the store's disk is full: free space (tagger vacuum"),
    ("XMinioStorageFull", 507, "quota or the store's disk is full"),
    ("AccessDenied", 403, "check AWS_PROFILE / the access key and the bucket policy"),
])
def test_s3_refusals_say_what_to_do_and_are_not_retried(code, status, hint):
    storage = S3Storage("s3://shop-lake/tagger", client=RefusingClient(code, status))
    with pytest.raises(StorageError) as e:
        storage.write_bytes("catalog/images/shard-1.parquet", b"x")
    assert str(e.value).startswith(f"S3 write of s3://shop-lake/tagger/catalog/images/shard-1.parquet "
                                   f"failed: {code} refused.")
    assert hint in str(e.value) and not e.value.retryable


@pytest.mark.parametrize("code, name", [(errno.EACCES, "EACCES"), (errno.EIO, "EIO"), (errno.EROFS, "EROFS")])
def test_local_errors_name_the_path_and_leave_no_temporary_file(tmp_path, monkeypatch, code, name):
    storage = open_storage(tmp_path)

    def fail(self, data):  # Path.write_bytes of the temporary file: half of it, then the error
        open(self, "wb").write(data[:1])
        raise OSError(code, "refused", str(self))

    monkeypatch.setattr(local.Path, "write_bytes", fail)
    with pytest.raises(StorageError, match=f"Could not write {tmp_path}/a/b.bin: refused \\[{name}\\]; "):
        storage.write_bytes("a/b.bin", b"data")
    assert [p.name for p in (tmp_path / "a").iterdir()] == []


def test_a_full_temporary_folder_is_a_storage_error(tmp_path, monkeypatch):
    from tagger.io import parquet

    def full(*a, **kw):
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(parquet.pq, "write_table", full)
    with pytest.raises(StorageError, match=r"temporary copy of .*t\.parquet at .*\[ENOSPC\]"):
        write_table(open_storage(tmp_path), "t.parquet", pa.table({"a": [1]}))


def test_a_damaged_table_without_a_registered_remedy(tmp_path):
    storage = open_storage(tmp_path)
    storage.write_bytes("x/t.parquet", b"PAR1 not really")
    with pytest.raises(CorruptTable, match=r"x/t\.parquet is damaged .*Restore it from a backup"):
        read_table(storage, "x/t.parquet")
    buf = io.BytesIO()
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"other": [1]}), buf)
    storage.write_bytes("x/u.parquet", buf.getvalue())
    with pytest.raises(CorruptTable, match="x/u.parquet is damaged"):  # not the columns expected
        read_table(storage, "x/u.parquet", pa.schema([("id", pa.string())]))
