"""Corrections: which of a correction and the export's own label wins, and the table merge."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa

from catalog_schemas.tables import CORRECTIONS
from tagger.corrections import Correction, Corrections, apply_corrections, merge_corrections

T0 = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)


def _row(pid: str, attribute: str, values: list[str], at: datetime, run: str = "pull-1") -> dict:
    return dict(product_id=pid, attribute=attribute, values=values, shown=["red"], shown_scores=[0.6],
                model_version="m1", reviewer="r@example.com", reviewed_at=at, task="1/1",
                reason="needs_review", pull_run_id=run)


def test_a_correction_made_after_the_rows_last_change_wins_over_the_export():
    labels = {"colour": ["red"], "pattern": ["solid"]}
    out, reviewed = apply_corrections(labels, T0, {"colour": Correction(("blue",), T0 + timedelta(hours=1)),
                                                   "features": Correction((), T0)})
    assert out == {"colour": ["blue"], "pattern": ["solid"], "features": []}
    assert reviewed == {"colour", "features"}  # at the same instant the correction still wins
    assert labels == {"colour": ["red"], "pattern": ["solid"]}  # the input is left as it was


def test_an_export_that_changed_after_the_review_wins_over_the_correction():
    out, reviewed = apply_corrections({"colour": ["green"]}, T0 + timedelta(days=1),
                                      {"colour": Correction(("blue",), T0)})
    assert out == {"colour": ["green"]} and reviewed == set()


def test_corrections_by_product_apply_only_to_their_product():
    table = pa.Table.from_pylist([_row("P1", "colour", ["blue"], T0)], schema=CORRECTIONS)
    c = Corrections.from_table(table)
    assert len(c) == 1
    assert c.apply("P1", [("colour", ["red"])], T0 - timedelta(1)) == ({"colour": ["blue"]}, {"colour"})
    assert c.apply("P2", [("colour", ["red"])], T0 - timedelta(1)) == ({"colour": ["red"]}, set())


def test_merge_keeps_the_latest_decision_per_product_and_attribute():
    previous = pa.Table.from_pylist([_row("P2", "colour", ["red"], T0), _row("P1", "colour", ["blue"], T0)],
                                    schema=CORRECTIONS)
    new = pa.Table.from_pylist([
        _row("P1", "colour", ["green"], T0 + timedelta(minutes=5), "pull-2"),  # edited later: wins
        _row("P2", "colour", ["red"], T0, "pull-2"),  # the same decision again: previous row stays
        _row("P1", "features", [], T0, "pull-2"),
    ], schema=CORRECTIONS)
    merged = merge_corrections(previous, new).to_pylist()
    assert [(r["product_id"], r["attribute"], r["values"], r["pull_run_id"]) for r in merged] == [
        ("P1", "colour", ["green"], "pull-2"), ("P1", "features", [], "pull-2"),
        ("P2", "colour", ["red"], "pull-1")]
    again = merge_corrections(merge_corrections(previous, new), new)
    assert again.to_pylist() == merged  # pulling the same decisions twice changes nothing
