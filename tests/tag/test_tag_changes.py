"""The change between two tag snapshots (tag artifact), and the rejects counts."""

import pyarrow as pa

from catalog_schemas.tables import TAG_LATEST
from tagger.ingest.rejects import read_reject_counts
from tagger.tag.changes import compute_tag_changes


def _tags(rows):
    cols = dict(zip(("product_id", "attribute", "value"), zip(*rows))) if rows else {
        "product_id": [], "attribute": [], "value": []}
    return pa.table({k: pa.array(list(v), pa.string()) for k, v in cols.items()})


def test_tag_changes_exact():
    prev = _tags([("p1", "colour", "red"), ("p1", "pattern", "solid"), ("p2", "colour", "blue"),
                  ("p3", "colour", "red")])
    latest = _tags([("p1", "colour", "blue"), ("p1", "pattern", "solid"), ("p2", "colour", "blue"),
                    ("p4", "pattern", "striped")])
    ch = compute_tag_changes(prev, latest)
    # p1 colour red -> blue (1 added, 1 removed, 1 changed); p3 gone; p4 new
    assert ch == dict(added=2, removed=2, changed=1, products_changed=3,
                      per_attribute={"colour": {"added": 1, "removed": 2},
                                     "pattern": {"added": 1, "removed": 0}})


def test_tag_changes_first_run_and_no_change():
    latest = _tags([("p1", "colour", "red")])
    assert compute_tag_changes(_tags([]), latest)["added"] == 1
    same = compute_tag_changes(latest, latest)
    assert (same["added"], same["removed"], same["products_changed"]) == (0, 0, 0)


def test_tag_changes_on_real_schema():
    empty = TAG_LATEST.empty_table()
    assert compute_tag_changes(empty, empty)["per_attribute"] == {}


def test_reject_counts(catalog, tmp_path):
    from tests.conftest import DEMO_TAXONOMY
    from tagger.ingest.run import ingest_catalog

    lake = str(tmp_path / "lake")
    assert read_reject_counts(lake)["total"] == 0  # no ingest yet: nothing rejected
    ingest_catalog(str(catalog), DEMO_TAXONOMY, lake)
    counts = read_reject_counts(lake)
    assert counts["total"] == 3 and sum(r["rows"] for r in counts["by_reason"]) == 3
    assert counts["url"].endswith("catalog/rejects/rejects.parquet") and counts["run_id"]
