"""What every flow shares: the default lake and the retry rule."""

from __future__ import annotations

from tagger.config import load_settings
from tagger.io.storage import StorageError

DEFAULT_LAKE = load_settings().lake

# Deterministic failures (bad catalog, bad config, missing model) fail at once; anything
# else (network, S3, a killed worker, a busy lake) is worth another try: every task is
# idempotent.
_DETERMINISTIC = (ValueError, LookupError, FileNotFoundError, PermissionError, TypeError)


def is_transient(exc: BaseException) -> bool:
    """Whether another try of the same task can succeed."""
    if isinstance(exc, _DETERMINISTIC):
        return False
    if isinstance(exc, StorageError):
        # The storage layer knows: a denied or malformed request, or a bad path refused
        # before any request, fails the same way again; throttling and dropped
        # connections do not.
        return exc.retryable
    return True


def retry_on_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry a failed task only when `is_transient` says so."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False
