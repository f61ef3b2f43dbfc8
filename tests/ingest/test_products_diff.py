"""products_table dates each product against its previous row with Arrow comparisons; they
must say what comparing the rows as Python values says, nested columns included."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from catalog_schemas.tables import PRODUCTS
from tagger.ingest.products import PreviousRows, products_table, rows_equal
from tagger.ingest.rows import CatalogRow

THEN = datetime(2026, 1, 1, tzinfo=timezone.utc)
NOW = datetime(2026, 2, 1, tzinfo=timezone.utc)


def test_rows_equal_compares_nested_values_and_nulls():
    t = pa.map_(pa.string(), pa.list_(pa.string()))
    a = pa.array([[("c", ["red"])], [("c", ["red"]), ("g", ["m"])], None, [], [("c", ["red", "blue"])],
                  [("c", ["red"])], None, [("c", [])]], t)
    b = pa.array([[("c", ["red"])], [("c", ["red"]), ("g", ["f"])], None, [], [("c", ["blue", "red"])],
                  [("s", ["red"])], [], [("c", None)]], t)
    assert rows_equal(a, b).tolist() == [True, False, True, True, False, False, False, False]
    lists = pa.array([None, [], ["h"]]), pa.array([[], None, ["h"]])
    assert rows_equal(*lists).tolist() == [False, False, True]
    assert rows_equal(*lists, null_as_empty=True).tolist() == [True, True, True]
    assert rows_equal(pa.array(["a", None, None]), pa.array(["a", None, "b"])).tolist() == [True, True, False]


def _image(rng, pid, k):
    return dict(image_uri=f"/img/{pid}-{k}.jpg", image_version="1", image_hash=f"h{pid}-{k}", image_shard="s")


def _row(rng, pid) -> dict:
    labels = {a: sorted(rng.choice(["red", "blue", "green"], size=rng.integers(1, 3), replace=False).tolist())
              for a in ("colour", "gender") if rng.random() < 0.7}
    more = [_image(rng, pid, k) for k in range(1, rng.integers(0, 3) + 1)]
    return dict(product_id=pid, category=rng.choice(["shirt", None]), **_image(rng, pid, 0),
                labels=sorted(labels.items()), text=rng.choice(["a red shirt", None]), more_images=more or None)


def _changed(rng, row: dict) -> tuple[dict, bool]:
    """A copy of row, maybe changed; whether its content changed."""
    row = {**row, "labels": list(row["labels"]), "more_images": [dict(i) for i in row["more_images"] or ()] or None}
    kind = rng.integers(8)
    if kind == 0:
        row["labels"] = row["labels"] + [("season", ["summer"])]
    elif kind == 1 and row["labels"]:
        a, v = row["labels"][0]
        row["labels"][0] = (a, v + ["pink"])
    elif kind == 2:
        row["text"] = "another title" if row["text"] is None else None
    elif kind == 3:
        row["image_hash"] = "new"
    elif kind == 4 and row["more_images"]:
        row["more_images"][0]["image_uri"] = "/moved.jpg"  # same picture elsewhere: no change
        return row, False
    elif kind == 5:
        row["more_images"] = (row["more_images"] or []) + [dict(image_uri="/x", image_version="1",
                                                                 image_hash="hx", image_shard="s")]
    elif kind == 6:
        row["category"] = "dress"
    else:
        return row, False
    return row, True


def _catalog_row(rec: dict, index: int) -> CatalogRow:
    def image(i):
        return CatalogRow(index, rec["product_id"], None, {}, i["image_uri"], image_version=i["image_version"],
                          image_hash=i["image_hash"], image_shard=i["image_shard"])

    row = image(rec)
    row.category, row.labels, row.text = rec["category"], dict(rec["labels"]), rec["text"]
    row.more = [image(i) for i in rec["more_images"] or ()]
    return row


def test_products_table_dates_each_product_as_a_row_by_row_comparison_does():
    rng = np.random.default_rng(0)
    before = [_row(rng, f"P{i:04d}") for i in range(300)]
    prev = pa.Table.from_pylist([dict(r, first_seen=THEN, updated_at=THEN, ingest_run_id="night1")
                                 for r in before[:250]], schema=PRODUCTS)  # the last 50 are new
    rows, changed = [], set()
    for i, r in enumerate(before):
        r2, did = _changed(rng, r)
        rows.append(_catalog_row(r2, i))
        if did and i < 250:
            changed.add(r["product_id"])
    order = rng.permutation(len(rows))  # export order is not id order
    rows = [rows[i] for i in order]
    table, counts = products_table(rows, PreviousRows(prev, [r.product_id for r in rows]), "night2", NOW)
    assert (counts.new, counts.changed, counts.unchanged) == (50, len(changed), 250 - len(changed))
    assert 40 < len(changed) < 250
    for r in table.to_pylist():
        pid, old = r["product_id"], int(r["product_id"][1:]) < 250
        assert r["first_seen"] == (THEN if old else NOW)
        fresh = not old or pid in changed
        assert (r["updated_at"], r["ingest_run_id"]) == ((NOW, "night2") if fresh else (THEN, "night1")), pid
