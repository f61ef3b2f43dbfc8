"""The rejects table: rows the ingest could not take in, with a stage and a reason. Collected
during a run, written once at its end in row order, and counted for people (Prefect
artifacts, summaries)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import pyarrow as pa

from catalog_schemas.tables import REJECTS
from tagger.io.parquet import read_table_or_empty, write_table
from tagger.io.storage import Storage, open_storage
from tagger.lake import REJECTS_DEFAULTS, REJECTS_PATH, rejects_history_path


class Problem(NamedTuple):
    """Why one row is rejected: the stage that found it, a reason code, a sentence."""

    stage: str
    reason: str
    detail: str

    def left_out(self, kept: int) -> Problem:
        """This image's problem, for a product that was ingested with its `kept` other images."""
        return self._replace(detail=f"{self.detail}; the product was ingested with its {_images(kept)}")

    def others_failed(self, failed: int) -> Problem:
        """The first image's problem, for a product none of whose images can be ingested."""
        return self._replace(detail=f"{self.detail}; its {_images(failed)} failed too") if failed else self


def _images(n: int) -> str:
    return f"{n} other image" + ("" if n == 1 else "s")


@dataclass
class Rejects:
    """The reject rows of one run, in the order they were found. `row_numbers`: the rows
    that are not ingested (an image left out of a product that kept others is not one)."""

    run_id: str
    source: str
    at: datetime
    rows: list[dict] = field(default_factory=list)
    row_numbers: set[int] = field(default_factory=set)

    def add(self, row_number: int, product_id: str | None, problem: Problem, *,
            product_kept: bool = False) -> None:
        if not product_kept:
            self.row_numbers.add(row_number)
        self.rows.append(dict(run_id=self.run_id, rejected_at=self.at, source=self.source,
                              row_number=row_number, product_id=product_id, **problem._asdict(),
                              product_kept=product_kept))

    def __len__(self) -> int:
        return len(self.rows)

    def images_left_out(self) -> int:
        """Reject rows of images left out of products that were ingested with others."""
        return sum(r["product_kept"] for r in self.rows)

    def in_row_order(self) -> list[dict]:
        """The reject rows by row number (a row's images in mapping order): the same
        whichever chunk of the export found them first, validation or fetching."""
        return sorted(self.rows, key=lambda r: r["row_number"])

    def by_reason(self) -> dict[str, int]:
        """Reject rows per reason code (images left out included), in the order the reasons
        first come up by row number."""
        counts: dict[str, int] = {}
        for r in self.in_row_order():
            counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        return counts

    def product_ids(self, reason: str) -> set[str]:
        """The products of the rows rejected (not ingested) for `reason`."""
        return {r["product_id"] for r in self.rows if r["reason"] == reason and not r["product_kept"]}


def write_rejects(storage: Storage, rejects: Rejects, *, rebuild: bool = False) -> str:
    """The run's rejects in the history, append-only (its own file, empty when nothing was
    rejected, so every night that ran is there), and as the latest run's view at
    REJECTS_PATH: not rewritten when the same rows fail the same way (a rebuild does not
    read the old view, which may be damaged). Returns the history file's URL."""
    table = pa.Table.from_pylist(rejects.in_row_order(), schema=REJECTS)
    history = rejects_history_path(f"{rejects.at:%Y-%m-%d}", rejects.run_id)
    write_table(storage, history, table)  # a re-run of the same run id replaces its own file
    _write_latest(storage, table, rebuild)
    return storage.url(history)


def _write_latest(storage: Storage, table: pa.Table, rebuild: bool) -> None:
    old = REJECTS.empty_table() if rebuild else read_table_or_empty(storage, REJECTS_PATH, REJECTS, defaults=REJECTS_DEFAULTS)
    stable = [c for c in REJECTS.names if c not in ("run_id", "rejected_at")]
    if not rebuild and old.num_rows == table.num_rows and old.select(stable).equals(table.select(stable)):
        return
    write_table(storage, REJECTS_PATH, table)


def read_reject_counts(lake: str) -> dict:
    """Rejected rows of the lake's rejects table (the latest ingest run), by stage and reason:
    {"total": n, "run_id": ..., "by_reason": [{"stage", "reason", "rows"}], "url": ...};
    every run's own rejects are under catalog/rejects/run_date=YYYY-MM-DD/."""
    storage = open_storage(lake)
    table = read_table_or_empty(storage, REJECTS_PATH, REJECTS, defaults=REJECTS_DEFAULTS)
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
