"""The retry rule of the flows: only errors that another try can fix are retried."""

import pytest


def storage_error(status: int, code: str):
    from botocore.exceptions import ClientError

    from tagger.io.storage import StorageError

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
    from tagger.io.lock import LakeBusy
    from tagger.model.versions import ModelNotFound
    from tagger.io.storage import StorageError

    assert not is_transient(StorageError("S3 URI 's3://' has no bucket"))  # no request made
    assert not is_transient(ModelNotFound("no model")) and not is_transient(ValueError())
    assert is_transient(LakeBusy("busy")) and is_transient(ConnectionError()) and is_transient(OSError())
    assert not is_transient(PermissionError("read-only lake folder"))
