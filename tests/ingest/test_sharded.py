"""Ingest in parts (tagger.ingest.sharded) gives exactly the tables and shards of one process,
on a first ingest, a re-ingest and a re-run; the reject guard and a failed run leave the lake
as it was, with no staged images behind. The fan-out here runs in this process; on a real
Dask cluster: tests/flows/test_ingest_sharded.py."""

from __future__ import annotations

import pytest
from PIL import Image

from tagger.config import IngestConfig
from tagger.ingest import sharded
from tagger.ingest.export import CatalogError
from tagger.ingest.run import ingest_catalog
from tagger.ingest.sharded import InProcess, ingest_in_parts
from tagger.lake import IMAGES_PREFIX, STAGING_PREFIX
from tests.conftest import DEMO_TAXONOMY
from tests.ingest.test_chunks import _counts, _export, _read, _tables, _write

# Parts, chunks and shards that fall across each other: 3 rows per part, 4 per chunk, 5 per shard.
PARTS = dict(part_rows=3)


def _config(**kw) -> IngestConfig:
    return IngestConfig(chunk_size=4, shard_size=5, max_reject_fraction=0.5, **kw)


def _one(export, lake, run_id, **kw):
    return ingest_catalog(str(export), DEMO_TAXONOMY, str(lake), _config(**kw), run_id=run_id)


def _parts(export, lake, run_id, fan_out=None, **kw):
    return ingest_in_parts(str(export), DEMO_TAXONOMY, str(lake), _config(**kw), run_id=run_id,
                           fan_out=fan_out, **PARTS)


def _staged(lake) -> list:
    return sorted((lake / STAGING_PREFIX).rglob("*.parquet")) if (lake / STAGING_PREFIX).exists() else []


def _same(a, b) -> None:
    ta, tb = _tables(a), _tables(b)
    assert ta["products"].equals(tb["products"]) and ta["rejects"].equals(tb["rejects"])
    assert ta["shards"] == tb["shards"]  # same names, same bytes


def test_parts_give_the_tables_and_shards_of_one_process(tmp_path):
    export = _export(tmp_path, "csv")
    one, parts = tmp_path / "one", tmp_path / "parts"
    a, b = _counts(_one(export, one, "night1")), _counts(_parts(export, parts, "night1"))
    assert a == b and a["rejected"] == 5 and a["products"] == 24 and len(a["shards_written"]) == 5
    _same(one, parts)
    assert not _staged(parts)

    # a re-ingest: a product gone, two images redrawn, one product's image now another's
    df = _read(export)
    df.loc[df.id == "P00003", "image"] = df[df.id == "P00004"].iloc[0]["image"]
    _write(df[df.id != "P00011"], export)
    for pid, colour in (("P00012", "green"), ("P00013", "navy")):
        Image.new("RGB", (40, 40), colour).save(export.parent / "images" / f"{pid}.jpg")
    a, b = _counts(_one(export, one, "night2")), _counts(_parts(export, parts, "night2"))
    assert a == b and (a["changed"], a["removed"], a["images_stored"]) == (3, 1, 2)
    _same(one, parts)

    # the same night again: only the rejected rows' images read again (they have no product
    # to compare with), nothing stored or written
    before = {p: p.stat().st_mtime_ns for p in (parts / "catalog").rglob("*.parquet") if "rejects" not in str(p)}
    again = _parts(export, parts, "night2")
    assert _counts(again) == _counts(_one(export, one, "night2"))
    assert (again.images_fetched, again.images_stored, again.products_written) == (2, 0, False)
    assert before == {p: p.stat().st_mtime_ns for p in (parts / "catalog").rglob("*.parquet")
                      if "rejects" not in str(p)}
    _same(one, parts)


def test_touched_images_are_read_but_not_decoded_again(tmp_path, monkeypatch):
    """An image whose file changed but not its bytes is fetched, found to be the product's
    own, and reused: its worker neither decodes nor stages it."""
    export = _export(tmp_path, "csv")
    lake = tmp_path / "lake"
    _parts(export, lake, "night1")
    for pid in ("P00002", "P00003", "P00004", "P00005", "P00006"):
        f = export.parent / "images" / f"{pid}.jpg"
        f.write_bytes(f.read_bytes())  # a new mtime: the version check reads them again
    staged, fetch = [], sharded.fetch_part

    def fetch_and_record(part):
        got = fetch(part)
        staged.append(got.staging)
        return got

    monkeypatch.setattr(sharded, "fetch_part", fetch_and_record)
    r = _parts(export, lake, "night2")
    # the 5 touched images and the 2 rejected rows' (read every night: no product to compare with)
    assert (r.images_fetched, r.images_stored, r.changed) == (5 + 2, 0, 0)
    assert len(staged) >= 3 and set(staged) == {None}  # parts of 3 rows per chunk: none staged an image


def test_the_reject_guard_holds_in_parts(tmp_path):
    export = _export(tmp_path, "csv")
    lake = tmp_path / "lake"
    _parts(export, lake, "night1")
    before = {p: p.read_bytes() for p in sorted((lake / "catalog").rglob("*.parquet")) if "rejects" not in str(p)}
    df = _read(export)
    df.loc[df.index[6:], "image"] = "images/nope.jpg"
    good = df[df.id.str.startswith("P")].iloc[0]
    Image.new("RGB", (40, 40), "blue").save(export.parent / good["image"])  # one new image is stored...
    _write(df, export)
    with pytest.raises(CatalogError, match="max_reject_fraction"):
        _parts(export, lake, "night2")
    after = {p: p.read_bytes() for p in sorted((lake / "catalog").rglob("*.parquet")) if "rejects" not in str(p)}
    assert after == before and not _staged(lake)  # ... and removed again with the run


class _FailingWrites(InProcess):
    """Writes the first shard, then fails like a lost worker."""

    def __init__(self):
        self.calls = 0

    def write(self, plans):
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("worker lost")
        return super().write(plans)


def test_a_failed_run_leaves_no_shard_and_no_staged_image(tmp_path):
    export = _export(tmp_path, "csv")
    lake = tmp_path / "lake"
    with pytest.raises(ConnectionError):
        _parts(export, lake, "night1", fan_out=_FailingWrites())
    assert not (lake / "catalog" / "products").exists()
    assert not list((lake / IMAGES_PREFIX).glob("*.parquet")) and not _staged(lake)
    r = _parts(export, lake, "night1")  # the re-run of the same run
    assert r.products == 24 and len(r.shards_written) == 5


def test_a_missing_staged_image_is_an_error_not_a_short_shard(tmp_path, monkeypatch):
    export = _export(tmp_path, "csv")
    lake = tmp_path / "lake"
    fetch = sharded.fetch_part

    def fetch_then_lose(part):
        got = fetch(part)
        if got.staging:
            (lake / got.staging).unlink()
        return got

    monkeypatch.setattr(sharded, "fetch_part", fetch_then_lose)
    with pytest.raises(LookupError, match="not in their staging files"):
        _parts(export, lake, "night1")
    assert not (lake / "catalog" / "products").exists()


def test_an_image_stored_already_is_not_decoded_again_by_either(tmp_path):
    """A product now showing another product's stored image is accepted under a decode limit
    that image no longer meets: one process never decodes it again, so neither may the parts
    (their worker does decode it: the bytes are not that product's own)."""
    export = _export(tmp_path, "csv")
    one, parts = tmp_path / "one", tmp_path / "parts"
    _one(export, one, "night1")
    _parts(export, parts, "night1")
    df = _read(export)
    df.loc[df.id == "P00003", "image"] = df[df.id == "P00004"].iloc[0]["image"]
    _write(df, export)
    a, b = _one(export, one, "night2", max_pixels=100), _parts(export, parts, "night2", max_pixels=100)
    assert _counts(a) == _counts(b) and a.changed == 1 and "too_large" not in str(a.reject_reasons)
    _same(one, parts)


def test_parts_on_s3_give_the_tables_of_one_process_and_leave_no_staged_image(s3_bucket, tmp_path):
    """The lake on S3 (the loopback endpoint): staged images are uploaded, read back by the
    shard step and deleted by name (a listing skips hidden keys, so nothing may rely on one)."""
    import boto3

    from catalog_schemas.tables import PRODUCTS, REJECTS
    from tagger.io.storage import open_storage, read_table
    from tagger.lake import PRODUCTS_PATH, REJECTS_PATH

    export = _export(tmp_path, "csv")
    one, parts = f"{s3_bucket}/one", f"{s3_bucket}/parts"
    assert _counts(_one(export, one, "night1")) == _counts(_parts(export, parts, "night1"))

    def tables(lake):
        s = open_storage(lake)
        return (read_table(s, PRODUCTS_PATH, PRODUCTS).drop_columns(["first_seen", "updated_at"]),
                read_table(s, REJECTS_PATH, REJECTS).drop_columns(["rejected_at"]),
                {p: s.read_bytes(p) for p in s.list(IMAGES_PREFIX) if p.endswith(".parquet")})

    (pa, ra, sa), (pb, rb, sb) = tables(one), tables(parts)
    assert pa.equals(pb) and ra.equals(rb) and sa == sb and len(sa) == 5
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket=s3_bucket.removeprefix("s3://"), Prefix="parts/").get("Contents", [])]
    assert keys and not [k for k in keys if STAGING_PREFIX in k]


def test_parts_give_the_products_text_of_one_process(tmp_path):
    """Text mapped: the same texts, cuts, text_encoding rejects and changes as one process."""
    from tagger.ingest.products import PreviousProducts
    from tagger.lake import PRODUCTS_PATH
    from tests.ingest.test_text import TITLED

    def both(run_id):
        a = ingest_catalog(str(export), TITLED, str(one), _config(), run_id=run_id)
        b = ingest_in_parts(str(export), TITLED, str(parts), _config(), run_id=run_id, **PARTS)
        assert _counts(a) == _counts(b)
        _same(one, parts)
        return a

    export, one, parts = _export(tmp_path, "csv"), tmp_path / "one", tmp_path / "parts"
    df = _read(export)
    df.loc[df.id == "P00004", "title"] = " ".join(["word"] * 600)
    df.loc[df.id == "P00006", "title"] = "Odd title marker"
    _write(df, export)
    export.write_bytes(export.read_bytes().replace(b"Odd title marker", b"Odd title m\xe9rker"))
    first = both("night1")
    assert first.texts_truncated == 1 and first.reject_reasons["text_encoding"] == 1
    texts = dict(zip(*(PreviousProducts(one / PRODUCTS_PATH).rows_of(df.id)[c].to_pylist()
                       for c in ("product_id", "text"))))
    assert "P00006" not in texts and len(texts["P00004"]) == 1999
    assert sum(t is not None for t in texts.values()) > 15  # a few demo titles are empty

    df.loc[df.id == "P00008", "title"] = "A new title"
    df.loc[df.id == "P00006", "title"] = "Odd title, mended"
    _write(df, export)
    again = both("night2")
    assert (again.new, again.changed) == (1, 1)
