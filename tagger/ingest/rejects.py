"""What the last ingest could not take in, counted for people (Prefect artifacts, summaries)."""

from __future__ import annotations

from catalog_schemas.tables import REJECTS
from tagger.lake import REJECTS_PATH
from tagger.io.storage import open_storage, read_table_or_empty


def read_reject_counts(lake: str) -> dict:
    """Rejected rows of the lake's rejects table (the latest ingest run), by stage and reason:
    {"total": n, "run_id": ..., "by_reason": [{"stage", "reason", "rows"}], "url": ...}."""
    storage = open_storage(lake)
    table = read_table_or_empty(storage, REJECTS_PATH, REJECTS)
    counts: dict[tuple[str, str], int] = {}
    for stage, reason in zip(table["stage"].to_pylist(), table["reason"].to_pylist()):
        counts[(stage, reason)] = counts.get((stage, reason), 0) + 1
    run_ids = sorted(set(table["run_id"].to_pylist()))
    return dict(
        total=table.num_rows, run_id=run_ids[-1] if run_ids else None,
        by_reason=[dict(stage=s, reason=r, rows=n) for (s, r), n in
                   sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))],
        url=storage.url(REJECTS_PATH),
    )
