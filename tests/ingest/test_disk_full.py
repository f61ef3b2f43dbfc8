"""A full disk during ingest: one line naming the file and what to do, exit code 3, and
nothing half-written (no temporary files, no shard that no committed table names).

The lake's disk fills up through a storage double: the Nth file copied into the lake writes
half its bytes and then fails with ENOSPC, as a full file system does. (A size-limited
tmpfs needs root to mount; the tests run without it.)"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tagger.cli import EXIT_STORAGE, main
from tagger.config import IngestConfig
from tagger.ingest.run import ingest_catalog
from tagger.io import local
from tagger.io.storage import StorageError, open_storage
from tagger.lake import PRODUCTS_PATH, read_products
from tests.conftest import DEMO_TAXONOMY


def fill_disk_at(monkeypatch, n: int, code: int = errno.ENOSPC) -> list[str]:
    """From the `n`th file copied into a local lake on, write half of it and fail with `code`."""
    calls: list[str] = []
    real = shutil.copyfile

    def copyfile(src, dst, **kw):
        calls.append(str(dst))
        if len(calls) < n:
            return real(src, dst, **kw)
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise OSError(code, errno.errorcode[code] == "ENOSPC" and "No space left on device"
                      or "Read-only file system", str(dst))

    monkeypatch.setattr(local.shutil, "copyfile", copyfile)
    return calls


def _state(lake: Path) -> tuple[set[str], bytes]:
    files = {str(p.relative_to(lake)) for p in lake.rglob("*") if p.is_file() and ".locks" not in p.parts}
    return files, (lake / PRODUCTS_PATH).read_bytes()


@pytest.fixture
def half_ingested(catalog, tmp_path) -> tuple[Path, Path]:
    """A lake holding the first 20 products of the export (shards of 10)."""
    df = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    first = catalog.parent / "first.csv"
    df.head(20).to_csv(first, index=False)
    lake = tmp_path / "lake"
    ingest_catalog(str(first), DEMO_TAXONOMY, str(lake), IngestConfig(shard_size=10))
    return catalog, lake


def test_disk_full_during_shards_leaves_the_lake_as_it_was(half_ingested, monkeypatch):
    catalog, lake = half_ingested
    before = _state(lake)
    calls = fill_disk_at(monkeypatch, 3)  # two new shards land, the third fills the disk
    with pytest.raises(StorageError) as e:
        ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), IngestConfig(shard_size=10))
    message = str(e.value)
    assert len(calls) == 3 and "\n" not in message
    assert message.startswith(f"Could not write {lake}/catalog/images/shard-")
    assert "No space left on device [ENOSPC]; the disk is full: free space (tagger vacuum" in message
    assert _state(lake) == before  # no shard of the failed run, no temporary file, same products
    monkeypatch.undo()
    again = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), IngestConfig(shard_size=10))
    assert again.products == 60 and len(again.shards_written) == 4  # the lock was released


def test_disk_full_at_the_products_table_removes_the_new_shards(half_ingested, monkeypatch):
    catalog, lake = half_ingested
    before = _state(lake)
    # 4 shards, then the history and latest rejects; the products table is the 7th file
    fill_disk_at(monkeypatch, 7)
    with pytest.raises(StorageError, match=f"Could not write {lake}/{PRODUCTS_PATH}: No space"):
        ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), IngestConfig(shard_size=10))
    files, products = _state(lake)
    assert products == before[1] and read_products(open_storage(lake)).num_rows == 20
    # what is left beyond the start: the rejects this run wrote down, no image shard
    new = files - before[0]
    assert len(new) == 2 and all(f.startswith("catalog/rejects/") for f in new), new
    assert {f for f in files if f.startswith("catalog/images/")} == {f for f in before[0] if f.startswith("catalog/images/")}


@pytest.mark.parametrize("code, hint", [
    (errno.ENOSPC, "No space left on device [ENOSPC]; the disk is full"),
    (errno.EROFS, "[EROFS]; the file system is read-only: remount it read-write"),
])
def test_cli_says_it_in_one_line_and_exits_3(half_ingested, monkeypatch, caplog, code, hint):
    catalog, lake = half_ingested
    fill_disk_at(monkeypatch, 1, code)
    rc = main(["ingest", str(catalog), "--taxonomy", DEMO_TAXONOMY, "--lake", str(lake), "--shard-size", "10"])
    assert rc == EXIT_STORAGE == 3
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and hint in errors[0] and str(lake) in errors[0]
    assert "Traceback" not in caplog.text
