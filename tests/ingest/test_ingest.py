import io
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_schemas.tables import PRODUCTS, REJECTS
from tagger.config import IngestConfig
from tagger.ingest.run import CatalogError, ingest_catalog
from tagger.lake import REJECTS_PATH, read_lake_taxonomy, read_products
from tagger.demo.sample import generate_catalog
from tagger.io.storage import open_storage, read_table, read_tables
from tests.conftest import DEMO_TAXONOMY


def _files(lake: Path) -> dict[str, int]:
    return {str(p.relative_to(lake)): p.stat().st_mtime_ns for p in lake.rglob("*") if p.is_file()}


def test_ingest_demo_catalog(catalog, tmp_path):
    lake = tmp_path / "lake"
    result = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), IngestConfig(shard_size=25, workers=3))
    assert (result.rows, result.products, result.new, result.rejected) == (63, 60, 60, 3)
    assert result.images_stored == 60 and len(result.shards_written) == 3
    assert [pq.read_metadata(lake / "catalog/images" / s).num_rows for s in result.shards_written] == [25, 25, 10]
    storage = open_storage(lake)
    rejects = read_table(storage, REJECTS_PATH, REJECTS).to_pylist()
    got = {(r["product_id"], r["stage"], r["reason"]) for r in rejects}
    assert got == {("BAD-MISSING", "fetch", "missing_file"), ("BAD-HTML", "decode", "not_an_image"),
                   ("BAD-LABEL", "validate", "unknown_label")}
    assert all(r["row_number"] >= 60 and r["detail"] for r in rejects)
    products = read_products(storage)
    assert products.schema.equals(PRODUCTS, check_metadata=False)
    assert products["product_id"].to_pylist() == sorted(f"P{i:05d}" for i in range(1, 61))
    assert read_lake_taxonomy(storage).name == "demo"
    # every product's image is in its shard, stored as an upright RGB JPEG of at most 512 px
    images = read_tables(storage, "catalog/images", pq.read_schema(lake / "catalog/images" / result.shards_written[0]))
    by_hash = dict(zip(images["image_hash"].to_pylist(), images["data"].to_pylist()))
    for p in products.to_pylist():
        img = Image.open(io.BytesIO(by_hash[p["image_hash"]]))
        assert img.format == "JPEG" and img.mode == "RGB" and max(img.size) <= 512


def test_reingest_unchanged_rewrites_nothing(catalog, tmp_path):
    lake = tmp_path / "lake"
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    before = _files(lake)
    again = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    assert (again.new, again.changed, again.unchanged, again.images_fetched) == (0, 0, 60, 2)
    assert not again.products_written and again.shards_written == []
    history = again.rejects_history.removeprefix(str(lake) + "/")
    assert _files(lake).keys() - {history} == before.keys()  # only the run's own rejects file is new
    assert {k: v for k, v in _files(lake).items() if k != history} == before


def test_incremental_changes(catalog, tmp_path):
    lake = tmp_path / "lake"
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    first = {p["product_id"]: p for p in read_products(open_storage(lake)).to_pylist()}
    df = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    df.loc[df.id == "P00002", "pattern"] = "checked" if first["P00002"]["labels"] != [("pattern", ["checked"])] else "solid"
    df = df[df.id != "P00003"]
    df.to_csv(catalog, index=False)
    Image.new("RGB", (40, 40), "red").save(catalog.parent / "images/P00001.jpg")
    result = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    assert (result.new, result.changed, result.removed, result.unchanged) == (0, 2, 1, 57)
    assert result.images_stored == 1 and len(result.shards_written) == 1
    now = {p["product_id"]: p for p in read_products(open_storage(lake)).to_pylist()}
    assert "P00003" not in now
    assert now["P00001"]["image_hash"] != first["P00001"]["image_hash"]
    assert now["P00001"]["first_seen"] == first["P00001"]["first_seen"]
    assert now["P00001"]["updated_at"] > first["P00001"]["updated_at"]
    assert now["P00004"] == first["P00004"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_formats_give_the_same_products(fmt, tmp_path):
    tables = []
    for f in ("csv", fmt):
        path = generate_catalog(tmp_path / f, n_products=20, seed=3, image_size=48)
        ingest_catalog(str(path), DEMO_TAXONOMY, str(tmp_path / f"lake-{f}"))
        t = read_products(open_storage(tmp_path / f"lake-{f}"))
        tables.append(t.select(["product_id", "category", "image_hash", "labels"]).to_pylist())
    assert tables[0] == tables[1]


def _write_csv(tmp_path, text: str | bytes, name="catalog.csv") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize("content, name, message", [
    ("", "catalog.csv", "cannot be parsed|no rows"),
    ("id,category,image,colour\n", "catalog.csv", "has no rows"),
    ("ID,category,img,colour\n1,tops,a.jpg,red\n", "catalog.csv", "lacks columns 'id'.*did you mean 'ID'"),
    ("id,category,image,colour\n1,tops,a.jpg,ro\xe9\n".encode("latin-1"), "catalog.csv", "not UTF-8"),
    ("id\n1\n", "catalog.xlsx", "unknown format '.xlsx'"),
])
def test_catalog_level_problems_write_nothing(tmp_path, content, name, message):
    lake = tmp_path / "lake"
    with pytest.raises(CatalogError, match=message):
        ingest_catalog(_write_csv(tmp_path, content, name), DEMO_TAXONOMY, str(lake))
    assert not lake.exists()


def test_missing_catalog(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        ingest_catalog(str(tmp_path / "nope.csv"), DEMO_TAXONOMY, str(tmp_path / "lake"))


def test_row_level_problems_become_rejects(catalog, tmp_path):
    df = pd.read_csv(catalog, dtype=str, keep_default_na=False).head(5)
    extra = [
        dict(df.iloc[0]),                                          # exact duplicate
        dict(df.iloc[1]) | {"colour": "blue" if df.iloc[1]["colour"] != "blue" else "red"},  # conflicting
        dict(df.iloc[2]) | {"id": "ESCAPE", "image": "../../../etc/passwd"},
        dict(df.iloc[2]) | {"id": "ABS", "image": "/etc/passwd"},
        dict(df.iloc[2]) | {"id": "FILEURI", "image": "file:///etc/passwd"},
        dict(df.iloc[2]) | {"id": "", "image": "images/P00003.jpg"},
        dict(df.iloc[2]) | {"id": "NOIMG", "image": ""},
        dict(df.iloc[2]) | {"id": "TWO", "colour": "red|blue"},
    ]
    pd.concat([df, pd.DataFrame(extra)]).to_csv(catalog, index=False)
    config = IngestConfig(max_reject_fraction=1.0)
    result = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(tmp_path / "lake"), config)
    rejects = read_table(open_storage(tmp_path / "lake"), REJECTS_PATH, REJECTS).to_pylist()
    reasons = {(r["row_number"], r["reason"]) for r in rejects}
    assert reasons == {(5, "duplicate_id"), (6, "conflicting_duplicate"), (7, "image_outside_root"),
                       (8, "image_outside_root"), (9, "bad_image_uri"), (10, "missing_id"),
                       (11, "missing_image"), (12, "unknown_label")}
    assert result.products == 5


def test_catalog_images_and_lake_on_s3(catalog, s3_bucket):
    import boto3

    s3 = boto3.client("s3")
    bucket = s3_bucket.removeprefix("s3://")
    for path in catalog.parent.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"exports/{path.relative_to(catalog.parent)}")
    lake = f"{s3_bucket}/lake"
    result = ingest_catalog(f"{s3_bucket}/exports/catalog.csv", DEMO_TAXONOMY, lake)
    assert (result.products, result.rejected) == (60, 3)
    products = read_products(open_storage(lake)).to_pylist()
    assert products[0]["image_uri"] == f"{s3_bucket}/exports/images/P00001.jpg"
    again = ingest_catalog(f"{s3_bucket}/exports/catalog.csv", DEMO_TAXONOMY, lake)
    assert again.images_fetched == 2 and not again.products_written  # ETags unchanged


def test_mass_rejection_keeps_the_products_table(catalog, tmp_path):
    lake = tmp_path / "lake"
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    before = read_products(open_storage(lake))
    for img in (catalog.parent / "images").glob("P000[0-4]*.jpg"):  # 49 of 60 images gone
        img.unlink()
    with pytest.raises(CatalogError, match="52 of 63 rows were rejected.*not updated"):
        ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    assert read_products(open_storage(lake)).equals(before)
    rejects = read_table(open_storage(lake), REJECTS_PATH, REJECTS)
    assert rejects.num_rows == 52  # what went wrong is still written down


def test_flaky_fetch_keeps_the_previous_row(catalog, tmp_path, monkeypatch):
    from tagger.ingest.source import ImageSource

    lake = tmp_path / "lake"
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    before = {p["product_id"]: p for p in read_products(open_storage(lake)).to_pylist()}
    real_read = ImageSource.read

    def flaky(self, uri):
        if uri.endswith("P00007.jpg"):
            raise ConnectionError("connection reset by peer")
        return real_read(self, uri)

    monkeypatch.setattr(ImageSource, "read", flaky)
    monkeypatch.setattr(ImageSource, "version", lambda self, uri: None)  # force reads
    result = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    assert result.reject_reasons == {"fetch_error": 1, "missing_file": 1, "not_an_image": 1,
                                     "unknown_label": 1}
    after = {p["product_id"]: p for p in read_products(open_storage(lake)).to_pylist()}
    assert after["P00007"] == before["P00007"] and result.removed == 0 and len(after) == 60


def test_image_paths_resolve_like_realpath(tmp_path):
    """ImageSource caches each folder's realpath; the answer is still os.path.realpath's, and
    a catalog reached through a symlinked folder names images inside it."""
    from tagger.ingest.source import ImageSource
    from tagger.labels import LabelError

    real = tmp_path / "real"
    (real / "images" / "sub").mkdir(parents=True)
    (real / "images" / "a.jpg").write_bytes(b"x")
    (tmp_path / "outside.jpg").write_bytes(b"x")
    os.symlink(real, tmp_path / "link")  # the catalog's folder, through a link
    os.symlink(real / "images", real / "alias")  # a folder link inside the catalog
    os.symlink(tmp_path / "outside.jpg", real / "images" / "out.jpg")  # a file link out of it
    source = ImageSource(str(tmp_path / "link" / "catalog.csv"))
    for ref in ["images/a.jpg", "alias/a.jpg", "images/sub/../a.jpg", "alias/sub/../a.jpg", "./images/a.jpg"]:
        assert source.resolve(ref) == os.path.realpath(tmp_path / "link" / ref) == str(real / "images/a.jpg"), ref
    for ref in ["images/out.jpg", "../outside.jpg", "images/../../outside.jpg", str(tmp_path / "outside.jpg")]:
        with pytest.raises(LabelError) as e:
            source.resolve(ref)
        assert e.value.reason == "image_outside_root", ref


@pytest.mark.parametrize("slow_disk", [False, True])
def test_source_versions_keep_row_order(monkeypatch, slow_disk):
    """Local stats run in the calling thread while they are fast, and in the pool in batches
    when they are slow (a network file system); S3 HEADs go to the pool one by one: answers
    stay in row order either way."""
    import threading

    from tagger.ingest import source

    monkeypatch.setattr(source, "STAT_BATCH", 7)
    threads = set()

    class Source:
        def version(self, uri):
            threads.add(threading.get_ident())
            if slow_disk and not uri.startswith("s3://"):
                time.sleep(0.001)
            return None if uri.endswith("missing") else f"v-{uri}"

    uris = [f"/img/{i}" for i in range(7)] + [f"s3://b/{i}" if i % 5 == 0 else f"/img/{i}" for i in range(7, 60)]
    uris += ["/img/missing"]
    got = source.read_versions(Source(), uris, workers=4)
    assert got == [f"v-{u}" for u in uris[:-1]] + [None]
    threads.clear()
    source.read_versions(Source(), [u for u in uris if not u.startswith("s3://")], workers=4)
    assert (threads != {threading.get_ident()}) == slow_disk  # a fast disk is never handed to the pool


def test_image_roots_allow_folders_outside_the_export(tmp_path):
    """An export's images on another disk (a linked images/ folder, absolute NAS paths) are
    taken when their resolved path is under an image root; every other escape is refused as
    before, roots or not."""
    from tagger.ingest.source import ImageSource
    from tagger.labels import LabelError

    export, nas, other = tmp_path / "export", tmp_path / "nas" / "photos", tmp_path / "other"
    for d in (export, nas, other):
        d.mkdir(parents=True)
    (nas / "a.jpg").write_bytes(b"x")
    (other / "b.jpg").write_bytes(b"x")
    os.symlink(nas, export / "images")  # images/ is a link to the NAS folder
    os.symlink(other / "b.jpg", nas / "sneaky.jpg")  # a link inside the root pointing out of it
    (tmp_path / "nas" / "photos-old").mkdir()  # shares the root's name as a prefix
    (tmp_path / "nas" / "photos-old" / "c.jpg").write_bytes(b"x")
    catalog = str(export / "catalog.csv")
    with pytest.raises(LabelError, match="--image-root"):
        ImageSource(catalog).resolve("images/a.jpg")  # no roots: refused as before
    source = ImageSource(catalog, [str(tmp_path / "nas" / "photos")])
    assert source.resolve("images/a.jpg") == str(nas / "a.jpg")
    assert source.resolve(str(nas / "a.jpg")) == str(nas / "a.jpg")
    assert source.resolve(str(nas / "x" / ".." / "a.jpg")) == str(nas / "a.jpg")
    for ref in ["images/sneaky.jpg", "images/../../other/b.jpg", str(other / "b.jpg"),
                str(tmp_path / "nas" / "photos-old" / "c.jpg"), "../other/b.jpg", "/etc/passwd",
                "file://" + str(nas / "a.jpg")]:
        with pytest.raises(LabelError) as e:
            source.resolve(ref)
        assert e.value.reason in ("image_outside_root", "bad_image_uri"), ref
    linked_root = ImageSource(catalog, [str(export / "images")])  # a root given through a link
    assert linked_root.resolve("images/a.jpg") == str(nas / "a.jpg")


def test_image_roots_on_s3_prefixes():
    from tagger.ingest.source import ImageSource
    from tagger.labels import LabelError

    source = ImageSource("s3://b/exports/catalog.csv", ["s3://b/shared-images/"])
    assert source.resolve("images/a.jpg") == "s3://b/exports/images/a.jpg"
    assert source.resolve("../shared-images/a.jpg") == "s3://b/shared-images/a.jpg"
    for ref in ["../shared-images-old/a.jpg", "../../c/x.jpg", "../other/a.jpg", "/etc/passwd"]:
        with pytest.raises(LabelError) as e:
            source.resolve(ref)
        assert e.value.reason == "image_outside_root", ref
    with pytest.raises(LabelError):
        ImageSource("s3://b/exports/catalog.csv").resolve("../shared-images/a.jpg")


def test_ingest_takes_images_under_a_root(catalog, tmp_path):
    """The issue's case end to end: the export's images/ is a link to another disk."""
    moved = tmp_path / "disk2" / "images"
    moved.parent.mkdir()
    (catalog.parent / "images").rename(moved)
    os.symlink(moved, catalog.parent / "images")
    lake = tmp_path / "lake"
    with pytest.raises(CatalogError, match="63 of 63 rows were rejected"):
        ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    result = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), IngestConfig(image_roots=[str(moved)]))
    assert (result.products, result.rejected) == (60, 3)


def test_image_roots_must_be_absolute():
    with pytest.raises(ValueError, match="absolute folders or s3:// prefixes"):
        IngestConfig(image_roots=["relative/images"])
    assert IngestConfig(image_roots=["/mnt/nas", "s3://b/p"]).image_roots == ["/mnt/nas", "s3://b/p"]


def test_rejects_history_keeps_every_run(catalog, tmp_path):
    """Each run's rejects stay under catalog/rejects/run_date=.../<run_id>.parquet; the
    latest run's are where they always were (REJECTS_PATH), for the readers that use it."""
    import duckdb

    lake = tmp_path / "lake"
    first = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), run_id="ingest-1")
    (catalog.parent / "images/P00007.jpg").unlink()
    second = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), run_id="ingest-2")
    (catalog.parent / "images/P00008.jpg").unlink()
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake), run_id="ingest-2")  # a re-run replaces its own
    day = f"{datetime.now(timezone.utc):%Y-%m-%d}"
    assert first.rejects_history == f"{lake}/catalog/rejects/run_date={day}/ingest-1.parquet"
    assert second.rejects_history.endswith(f"run_date={day}/ingest-2.parquet")
    rows = duckdb.sql(f"SELECT run_date, run_id, count(*) FROM read_parquet('{lake}/catalog/rejects/*/*.parquet', "
                      "hive_partitioning = true) GROUP BY ALL ORDER BY run_id").fetchall()
    assert [(str(d), r, n) for d, r, n in rows] == [(day, "ingest-1", 3), (day, "ingest-2", 5)]
    latest = read_table(open_storage(lake), REJECTS_PATH, REJECTS)
    assert set(latest["run_id"].to_pylist()) == {"ingest-2"} and latest.num_rows == 5
