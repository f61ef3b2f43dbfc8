"""The retry rule of the flows: only errors that another try can fix are retried."""

import pytest


def storage_error(status: int, code: str):
    from botocore.exceptions import ClientError

    from tagger.storage import StorageError

    cause = ClientError({"Error": {"Code": code, "Message": code},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    try:
        raise StorageError(f"S3 read of s3://b/k failed: {code}") from cause
    except StorageError as e:
        return e


@pytest.mark.parametrize("status,code,transient", [
    (403, "AccessDenied", False), (404, "NoSuchBucket", False), (400, "InvalidBucketName", False),
    (429, "SlowDown", True), (503, "ServiceUnavailable", True), (500, "InternalError", True),
])
def test_s3_errors_are_retried_only_when_transient(status, code, transient):
    from flows._common import is_transient

    assert is_transient(storage_error(status, code)) is transient


def test_other_errors_transient_or_not():
    from flows._common import is_transient
    from tagger.lock import LakeBusy
    from tagger.registry import ModelNotFound
    from tagger.storage import StorageError

    assert not is_transient(StorageError("S3 URI 's3://' has no bucket"))  # no request made
    assert not is_transient(ModelNotFound("no model")) and not is_transient(ValueError())
    assert is_transient(LakeBusy("busy")) and is_transient(ConnectionError()) and is_transient(OSError())
    assert not is_transient(PermissionError("read-only lake folder"))


def test_sharded_tagging_gives_the_same_tags_as_one_process(prefect_api, trained_lake, tmp_path):
    """tag-sharded on a local Dask cluster of 2 worker processes writes the tags `tag` writes."""
    import shutil

    import numpy as np

    from flows.tag import tag
    from flows.tag_sharded import tag_sharded
    from tagger.storage import open_storage
    from tagger.tags import read_latest

    lake, version = trained_lake
    other = tmp_path / "other"
    shutil.copytree(lake, other)
    one = tag(str(lake), full=True)
    sharded = tag_sharded(str(other), full=True, shards=3)
    assert sharded["tagged"] == one["tagged"] == 60 and sharded["model_version"] == version
    a, b = (read_latest(open_storage(str(x))).to_pylist() for x in (lake, other))
    key = lambda r: (r["product_id"], r["attribute"], r["value"], r["source"])
    assert [key(r) for r in a] == [key(r) for r in b] and len(a) > 100
    # same model, same images; only the batches differ: scores agree to float rounding
    sa, sb = (np.array([r["score"] if r["score"] is not None else -1 for r in t]) for t in (a, b))
    assert np.abs(sa - sb).max() < 1e-4
