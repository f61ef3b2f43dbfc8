"""What every flow shares: the default lake and the retry rule."""

from __future__ import annotations

import os

from tagger.io.storage import StorageError

DEFAULT_LAKE = os.environ.get("TAGGER_LAKE", "lake")

# Deterministic failures (bad catalog, bad config, missing model) fail at once; anything
# else (network, S3, a killed worker, a busy lake) is worth another try: every task is
# idempotent.
_DETERMINISTIC = (ValueError, LookupError, FileNotFoundError, PermissionError, TypeError)
# HTTP 4xx from S3 means the request itself is wrong (403 AccessDenied, 404 NoSuchBucket,
# 400 InvalidBucketName): the same request fails again. 408 and 429 are "try later".
_RETRYABLE_4XX = {408, 429}


def is_transient(exc: BaseException) -> bool:
    """Whether another try of the same task can succeed."""
    if isinstance(exc, _DETERMINISTIC):
        return False
    if isinstance(exc, StorageError):
        cause = exc.__cause__
        if cause is None:  # a bad URI or path, refused before any request
            return False
        response = getattr(cause, "response", None) or {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status and 400 <= status < 500 and status not in _RETRYABLE_4XX:
            return False
    return True


def retry_on_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False
