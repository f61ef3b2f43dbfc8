"""The S3 backend of `Storage`: s3://bucket/prefix through boto3, and botocore's errors
translated into StorageError (with whether another try can help).

Endpoint, region, credentials and addressing style come from the standard AWS
configuration (environment variables such as AWS_ENDPOINT_URL, AWS_PROFILE, ~/.aws), so
S3-compatible stores (MinIO, Ceph, R2) work without code changes. Conditional writes use
`If-None-Match: *` and `If-Match: <etag>` (AWS S3, MinIO and R2 honour them; a store that
ignores them, such as rclone's, writes anyway: `tagger.io.lock` reads back to catch that).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from tagger.config import load_settings
from tagger.io.base import FileInfo, Storage, StorageError, TooLarge

_CLIENTS: dict[bytes, object] = {}
_CLIENTS_LOCK = threading.Lock()
# The settings a client is built from: a new value (another endpoint, profile, key, number
# of attempts) gets a new client, the same values share one (boto3 clients are thread-safe,
# and building one costs ~0.1-0.5 s of CPU).
_CLIENT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION")

# HTTP 4xx means the request itself is wrong (403 AccessDenied, 404 NoSuchBucket, 400
# InvalidBucketName): the same request fails again. 408 and 429 are "try later", and so are
# these codes, which some stores send with a 400 or 503.
_RETRYABLE_4XX = {408, 429}
_TRY_LATER_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                    "RequestLimitExceeded", "TooManyRequests", "TooManyRequestsException"}
# A conditional write that lost: 412 Precondition Failed; 409 when another conditional
# write to the key is in flight (AWS asks to retry, which the lock's polling does).
_CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
# A store that is full or over quota (Ceph, MinIO; 507 on some) fails the same way until
# someone frees space: not retried, whatever its HTTP status.
_FULL = {"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "StorageFull",
         "InsufficientStorage"}
_DENIED = ("the credentials may not do this here: check AWS_PROFILE / the access key and the "
           "bucket policy (s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucket on the lake's prefix)")
_HINTS = {
    **dict.fromkeys(_FULL, "The bucket's quota or the store's disk is full: free space (tagger "
                    "vacuum --lake LAKE) or raise the quota, then re-run"),
    **dict.fromkeys(("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "ExpiredToken", "InvalidToken"), _DENIED[0].upper() + _DENIED[1:]),
    "EntityTooLarge": "The object is over the store's size limit for one upload: lower "
                      "IngestConfig.shard_size (--shard-size) so image shards are smaller",
}


def create_s3_client() -> Any:
    """A boto3 S3 client configured from the standard AWS settings, with adaptive retries
    (throttling, 5xx and dropped connections are retried with backoff; attempts from
    TAGGER_S3_MAX_ATTEMPTS, default 8). Shared per process and settings."""
    import boto3
    from botocore.config import Config

    attempts = load_settings().s3_max_attempts
    # A digest, so that no secret sits in a long-lived structure.
    settings = (os.getpid(), attempts, *(os.environ.get(k) for k in _CLIENT_ENV))
    key = hashlib.sha256(repr(settings).encode()).digest()
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            config = Config(
                retries={"mode": "adaptive", "max_attempts": attempts},
                max_pool_connections=64,
                connect_timeout=10,
                read_timeout=60,
                # Requests are SigV4 anyway; presigned URLs would default to SigV2, which
                # newer regions and most S3-compatible stores refuse.
                signature_version="s3v4",
            )
            _CLIENTS[key] = boto3.session.Session().client("s3", config=config)
        return _CLIENTS[key]


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    rest = str(uri)[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/prefix")
    return bucket, key.strip("/")


def _code(e: Exception) -> str | None:
    """The S3 error code of a botocore ClientError ('NoSuchKey', '404', 'SlowDown')."""
    return getattr(e, "response", {}).get("Error", {}).get("Code")


def _retryable(e: BaseException) -> bool:
    """Whether another try of the request that raised botocore's `e` can succeed."""
    from botocore.exceptions import ClientError, ParamValidationError

    if isinstance(e, ParamValidationError):  # refused before any request (an empty key)
        return False
    if not isinstance(e, ClientError):
        return True  # BotoCoreError: connection dropped, endpoint unreachable, read timeout
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if _code(e) in _TRY_LATER_CODES:
        return True
    return not (status and 400 <= status < 500 and status not in _RETRYABLE_4XX)


class S3Storage(Storage):
    def __init__(self, uri: str, client: Any = None):
        self.bucket, self.prefix = split_s3(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._client = client

    @cached_property
    def client(self) -> Any:  # a botocore S3 client
        return self._client or create_s3_client()

    def _key(self, path: str) -> str:
        if ".." in path.split("/"):
            raise StorageError(f"Path {path!r} escapes the root {self.uri}")
        return f"{self.prefix}/{path}".lstrip("/") if self.prefix else path

    @contextmanager
    def translate_errors(self, what: str, path: str) -> Iterator[None]:
        """botocore's errors, once its retries are spent, as one StorageError naming the URI
        (never the credentials), what to do, and whether another try can help."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            hint = _HINTS.get(err.get("Code"), "Check the bucket, the permissions and "
                              "AWS_ENDPOINT_URL; a re-run continues where this one stopped")
            raise StorageError(
                f"S3 {what} of {self.url(path)} failed: {err.get('Code')} {err.get('Message', '')}".rstrip()
                + f". {hint}.", retryable=_retryable(e) and err.get("Code") not in _FULL
            ) from e
        except BotoCoreError as e:
            raise StorageError(
                f"S3 {what} of {self.url(path)} failed after retries ({type(e).__name__}: {e}). The "
                "endpoint is unreachable or overloaded; a re-run continues where this one stopped "
                "(more attempts: TAGGER_S3_MAX_ATTEMPTS).", retryable=_retryable(e)
            ) from e
        except S3UploadFailedError as e:  # s3transfer's wrapper around the same errors
            cause = e.__cause__ or e.__context__
            raise StorageError(f"S3 {what} of {self.url(path)} failed: {e}. A re-run continues "
                               "where this one stopped.",
                               retryable=_retryable(cause) if cause is not None else True) from e

    def _get(self, path: str) -> dict | None:
        """GetObject's answer (the body not read yet), or None if there is no such key."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(path))
        except self.client.exceptions.NoSuchKey:
            return None

    def read_bytes(self, path: str, max_bytes: int | None = None) -> bytes:
        with self.translate_errors("read", path):
            obj = self._get(path)
            if obj is None:
                raise FileNotFoundError(f"{self.url(path)} does not exist")
            with obj["Body"] as body:
                if max_bytes is None:
                    return body.read()
                if obj["ContentLength"] > max_bytes:  # refused before the body is read
                    raise TooLarge(self.url(path), obj["ContentLength"], max_bytes)
                data = body.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise TooLarge(self.url(path), len(data), max_bytes)
        return data

    def read_with_version(self, path: str) -> tuple[bytes, str] | None:
        with self.translate_errors("read", path):
            obj = self._get(path)
            if obj is None:
                return None
            return obj["Body"].read(), obj["ETag"].strip('"')

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.translate_errors("write", path):
            self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data)

    def _put_if(self, path: str, data: bytes, condition: dict, lost: set[str]) -> bool:
        """PUT under a condition; False when the store refuses with one of the `lost` codes."""
        from botocore.exceptions import ClientError

        with self.translate_errors("conditional write", path):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data, **condition)
                return True
            except ClientError as e:
                if _code(e) in lost:
                    return False
                raise

    def create_if_absent(self, path: str, data: bytes) -> bool:
        return self._put_if(path, data, {"IfNoneMatch": "*"}, _CONDITION_FAILED)

    def replace_if(self, path: str, data: bytes, version: str) -> bool:
        etag = '"' + version.strip('"') + '"'  # quoted in HTTP; versions are kept without
        return self._put_if(path, data, {"IfMatch": etag}, _CONDITION_FAILED | _NOT_FOUND)

    def upload(self, local_file: Path, path: str) -> None:
        with self.translate_errors("upload", path):
            self.client.upload_file(str(local_file), self.bucket, self._key(path))

    def exists(self, path: str) -> bool:
        return self.version(path) is not None

    def list(self, prefix: str = "") -> list[str]:
        key_prefix = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = []
        with self.translate_errors("listing", prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=key_prefix
            ):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][strip:]
                    if not any(part.startswith(".") for part in rel.split("/")):
                        out.append(rel)
        return sorted(out)

    def delete(self, path: str) -> None:
        with self.translate_errors("delete", path):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(path))

    def _head(self, path: str) -> dict | None:
        """The object's HEAD response; None when there is no such object."""
        from botocore.exceptions import ClientError

        with self.translate_errors("HEAD", path):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self._key(path))
            except ClientError as e:
                if _code(e) in _NOT_FOUND:
                    return None
                raise

    def info(self, path: str) -> FileInfo | None:
        head = self._head(path)
        return None if head is None else FileInfo(head["ContentLength"], head["LastModified"])

    def version(self, path: str) -> str | None:
        head = self._head(path)
        return None if head is None else head["ETag"].strip('"')

    def presigned_url(self, path: str, expires_s: int) -> str | None:
        # Signed locally with the run's credentials: no request, nothing to retry.
        with self.translate_errors("presign", path):
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(path)},
                ExpiresIn=expires_s)

    @contextmanager
    def local_copy(self, path: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
            local = Path(tmp) / Path(path).name
            with self.translate_errors("download", path):
                self.client.download_file(self.bucket, self._key(path), str(local))
            yield local
