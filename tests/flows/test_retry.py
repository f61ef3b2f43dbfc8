"""The retry rule of the flows: only errors that another try can fix are retried."""

import pytest


def storage_error(cause: Exception):
    """The StorageError that the S3 backend makes of botocore's `cause`."""
    from tagger.io.s3 import S3Storage
    from tagger.io.storage import StorageError

    storage = S3Storage("s3://b", client=object())  # no request is made
    try:
        with storage.translate_errors("read", "k"):
            raise cause
    except StorageError as e:
        assert e.__cause__ is cause and "s3://b/k" in str(e)
        return e
    raise AssertionError("not translated")


def client_error(status: int, code: str):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("status,code,transient", [
    (403, "AccessDenied", False), (404, "NoSuchBucket", False), (400, "InvalidBucketName", False),
    (429, "SlowDown", True), (503, "ServiceUnavailable", True), (500, "InternalError", True),
    (408, "RequestTimeout", True), (400, "RequestTimeout", True),  # S3 answers a slow upload 400
])
def test_s3_errors_are_retried_only_when_transient(status, code, transient):
    from flows._common import is_transient

    error = storage_error(client_error(status, code))
    assert error.retryable is transient
    assert is_transient(error) is transient


def test_connection_errors_are_transient():
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    from flows._common import is_transient

    for cause in (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
                  ReadTimeoutError(endpoint_url="http://127.0.0.1:9")):
        assert is_transient(storage_error(cause))


def test_requests_refused_before_sending_are_not_transient():
    from botocore.exceptions import ParamValidationError

    from flows._common import is_transient

    assert not is_transient(storage_error(ParamValidationError(report="Invalid length for parameter Key")))


def test_upload_errors_keep_the_cause_status():
    """boto3 wraps a failed upload's ClientError in S3UploadFailedError: still classified."""
    from boto3.exceptions import S3UploadFailedError

    from flows._common import is_transient

    def failed_upload(status, code):
        try:
            try:
                raise client_error(status, code)
            except Exception:  # as boto3.s3.transfer does: raised while handling the ClientError
                raise S3UploadFailedError("Failed to upload x to b/k")
        except S3UploadFailedError as e:
            return e

    assert not is_transient(storage_error(failed_upload(403, "AccessDenied")))
    assert is_transient(storage_error(failed_upload(503, "SlowDown")))


def test_other_errors_transient_or_not():
    from flows._common import is_transient
    from tagger.io.lock import LakeBusy
    from tagger.io.storage import StorageError, TooLarge
    from tagger.model.versions import ModelNotFound

    assert not is_transient(StorageError("S3 URI 's3://' has no bucket"))  # no request made
    assert is_transient(StorageError("endpoint down", retryable=True))
    assert not is_transient(TooLarge("s3://b/k", 10, 5))
    assert not is_transient(ModelNotFound("no model")) and not is_transient(ValueError())
    assert is_transient(LakeBusy("busy")) and is_transient(ConnectionError()) and is_transient(OSError())
    assert not is_transient(PermissionError("read-only lake folder"))
