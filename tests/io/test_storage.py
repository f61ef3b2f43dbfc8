import pickle

import pyarrow as pa
import pytest

from tagger.io.storage import (
    LocalStorage,
    StorageError,
    TooLarge,
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


def test_bounded_read_refuses_before_reading(storage):
    storage.write_bytes("img/a.jpg", b"x" * 100)
    assert storage.read_bytes("img/a.jpg", max_bytes=100) == b"x" * 100
    with pytest.raises(TooLarge) as e:
        storage.read_bytes("img/a.jpg", max_bytes=99)
    assert (e.value.size, e.value.limit, e.value.retryable) == (100, 99, False)
    assert e.value.uri == storage.url("img/a.jpg")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_bytes("img/missing.jpg", max_bytes=10)
    again = pickle.loads(pickle.dumps(e.value))  # crosses process pools and Prefect results
    assert (type(again), again.size, str(again)) == (TooLarge, 100, str(e.value))


def test_bounded_read_of_a_file_that_grew_after_its_size_was_taken(tmp_path, monkeypatch):
    import os

    import tagger.io.base
    from tagger.io.base import read_bounded

    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    # the size taken before the read is 40: the file grew by 60 bytes since
    monkeypatch.setattr(tagger.io.base.os, "fstat", lambda fd: os.stat_result((0,) * 6 + (40,) + (0,) * 3))
    with open(path, "rb") as f:
        assert read_bounded(f, str(path), 100) == b"x" * 100
    with open(path, "rb") as f, pytest.raises(TooLarge) as e:
        read_bounded(f, str(path), 99)
    assert (e.value.size, e.value.limit) == (100, 99)


def test_defaults_fill_only_the_columns_asked_for(storage):
    """A table written before a column existed: a reader of other columns (the tag run's
    products) must not trip over the default of a column it does not read."""
    write_table(storage, "t.parquet", pa.table({"id": ["a"], "n": [1]}, schema=SCHEMA))
    narrow = pa.schema([SCHEMA.field("id")])
    assert read_table(storage, "t.parquet", narrow, defaults={"extra": None}).to_pylist() == [{"id": "a"}]
    wide = SCHEMA.append(pa.field("extra", pa.int64()))
    assert read_table(storage, "t.parquet", wide, defaults={"extra": None}).to_pylist() == [
        {"id": "a", "n": 1, "extra": None}]


def test_read_with_version_matches_version(storage):
    assert storage.read_with_version(".locks/x.json") is None
    assert storage.create_if_absent(".locks/x.json", b"one")
    data, v1 = storage.read_with_version(".locks/x.json")
    assert (data, v1) == (b"one", storage.version(".locks/x.json"))
    assert storage.replace_if(".locks/x.json", b"two!", v1)
    data, v2 = storage.read_with_version(".locks/x.json")
    assert data == b"two!" and v2 not in (None, v1)
    assert storage.list("") == []  # hidden: lock files stay out of every listing


def test_local_path_only_where_there_is_one(storage, tmp_path):
    local = storage.local_path(".locks/catalog.lock")
    if storage.uri.startswith("s3://"):
        assert local is None
    else:
        assert local == tmp_path / "root" / ".locks" / "catalog.lock"


@pytest.fixture(params=["local", "s3"])
def strict_storage(request, tmp_path, monkeypatch):
    """A storage whose conditional writes are enforced: a folder, or an in-process S3 (moto)
    that answers like AWS (412 PreconditionFailed; 404 NoSuchKey for If-Match on no object).
    The loopback endpoint (rclone) ignores conditions, as some stores do."""
    if request.param == "local":
        yield open_storage(tmp_path / "root")
        return
    import boto3
    from moto import mock_aws

    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="strict")
        yield open_storage("s3://strict/lake")


def test_conditional_writes_lose_when_the_file_moved_on(strict_storage):
    s = strict_storage
    assert not s.replace_if("a.json", b"x", "0-0")  # nothing there to replace
    assert not s.exists("a.json")
    assert s.create_if_absent("a.json", b"first")
    assert not s.create_if_absent("a.json", b"second")
    _, v1 = s.read_with_version("a.json")
    assert s.replace_if("a.json", b"third", v1)
    assert not s.replace_if("a.json", b"fourth", v1)  # v1 is gone: someone else's write won
    assert s.read_bytes("a.json") == b"third"


def test_local_create_if_absent_never_shows_a_part(tmp_path):
    """The file appears whole (linked into place), and no temporary file is left."""
    s = LocalStorage(tmp_path)
    assert s.create_if_absent("d/x.bin", b"abc" * 1000)
    assert not s.create_if_absent("d/x.bin", b"other")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.bin"]
    assert (tmp_path / "d" / "x.bin").read_bytes() == b"abc" * 1000
