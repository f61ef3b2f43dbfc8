import pyarrow as pa
import pytest

from tagger.io.storage import (
    LocalStorage,
    StorageError,
    open_file,
    open_storage,
    read_table,
    read_table_or_empty,
    read_tables,
    write_table,
)

SCHEMA = pa.schema([("id", pa.string()), ("n", pa.int64())])


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return open_storage(tmp_path / "root")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"{bucket}/some/prefix")


def test_bytes_round_trip_list_delete(storage):
    storage.write_bytes("a/b/one.bin", b"1")
    storage.write_bytes("a/two.bin", b"22")
    storage.write_bytes("a/two.bin", b"333")  # replace
    assert storage.read_bytes("a/two.bin") == b"333"
    assert storage.list("a") == ["a/b/one.bin", "a/two.bin"]
    assert storage.exists("a/b/one.bin") and not storage.exists("a/missing")
    v1 = storage.version("a/two.bin")
    storage.write_bytes("a/two.bin", b"4444")
    assert storage.version("a/two.bin") not in (None, v1)
    assert storage.delete_prefix("a") == 2
    assert storage.list("a") == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_bytes("a/two.bin")


def test_table_round_trip(storage):
    t = pa.table({"id": ["x", "y"], "n": [1, 2]}, schema=SCHEMA)
    write_table(storage, "t/part-0.parquet", t)
    write_table(storage, "t/part-1.parquet", t.slice(1))
    assert read_table(storage, "t/part-0.parquet", SCHEMA).equals(t)
    assert read_tables(storage, "t", SCHEMA).num_rows == 3
    assert read_table_or_empty(storage, "nope.parquet", SCHEMA).num_rows == 0
    with storage.local_copy("t/part-1.parquet") as local:
        assert local.stat().st_size > 0


def test_local_writes_leave_no_temp_files_and_hide_them(tmp_path):
    s = LocalStorage(tmp_path)
    s.write_bytes("x/data.bin", b"abc")
    (tmp_path / "x" / ".data.bin.1234.tmp").write_bytes(b"half")  # a crashed writer's leftover
    assert s.list("x") == ["x/data.bin"]
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [".data.bin.1234.tmp", "data.bin"]


def test_local_paths_cannot_escape_root(tmp_path):
    s = LocalStorage(tmp_path / "root")
    with pytest.raises(StorageError, match="escapes the root"):
        s.write_bytes("../outside.bin", b"x")
    assert not (tmp_path / "outside.bin").exists()


def test_open_file_splits_uri(tmp_path):
    storage, name = open_file(str(tmp_path / "dir" / "file.csv"))
    assert name == "file.csv" and storage.uri == str(tmp_path / "dir")
    storage, name = open_file("s3://bucket/a/b.csv")
    assert (storage.bucket, storage.prefix, name) == ("bucket", "a", "b.csv")
