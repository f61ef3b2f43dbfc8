"""benchmarks/nightly_incremental.py runs end to end on a tiny catalog, so it cannot rot.

No speed or memory figure is asserted (those are for a quiet machine); what is asserted is
what the figures rest on: the full run tags every product, the incremental run exactly
the changed ones, and every figure the README quotes is produced.
"""

from __future__ import annotations

import pytest

from benchmarks import nightly_incremental as bench

pytestmark = pytest.mark.slow  # two catalogs, four tag runs in fresh processes (~1 min)


def test_nightly_benchmark_tags_exactly_the_changed_products(capsys):
    r = bench.main(["--products", "40", "80", "--pool", "6", "--chunk-size", "16",
                    "--latest-batch-rows", "32", "--image-size", "32"])
    for s, n in zip(r["sizes"], (40, 80)):
        full, incremental = s["full"], s["incremental"]
        assert s["products"] == full["products"] == incremental["products"] == n
        assert full["tagged"] == n and full["latest_rows"] > 0
        assert s["changed"] == 2 and incremental["tagged"] == 2 and s["incremental_tagged_exactly_changed"]
        assert incremental["latest_rows"] > 0 and incremental["history_rows"] < full["history_rows"]
        for key in ("seconds", "cpu_seconds", "peak_rss_mb"):
            assert full[key] > 0 and incremental[key] > 0, key
        assert 0 < s["tag_ratio"] and 0 < s["nightly_ratio"]
    assert set(r["memory_growth"]) == {"full", "incremental"}
    assert capsys.readouterr().out.count("\n| ") == 2


def test_changed_export_differs_in_exactly_the_changed_rows(tmp_path):
    catalog = bench.make_catalog(tmp_path, 300, pool=5, image_size=32)
    before = {r["id"]: r for r in bench._read_rows(catalog)}
    changed = bench.change_catalog(catalog, 0.01, image_size=32)
    after = {r["id"]: r for r in bench._read_rows(catalog)}
    assert len(changed) == 3 and before.keys() == after.keys()
    assert sorted(pid for pid in before if before[pid] != after[pid]) == changed
