"""What every flow shares: the default lake and the retry rule."""

from __future__ import annotations

import os

DEFAULT_LAKE = os.environ.get("TAGGER_LAKE", "lake")

# Deterministic failures (bad catalog, bad config, missing model) fail at once; anything
# else (network, S3, a killed worker) is worth another try: every task is idempotent.
_DETERMINISTIC = (ValueError, LookupError, FileNotFoundError, TypeError)


def retry_on_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except _DETERMINISTIC:
        return False
    except Exception:
        return True
    return False
