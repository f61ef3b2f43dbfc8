"""The bad-input corpus of issue 3, at the ingest level, on local disk and on S3.

One catalog holds every bad input next to good rows. Each bad row must end as a reject with
its own stage and reason; each odd-but-usable image (CMYK, 16-bit, palette with
transparency, EXIF-rotated, animated GIF, WebP) must be stored correctly (checked on the
stored pixels); every good row must be ingested. Catalog-level problems must be a
CatalogError before anything is written to the lake.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import boto3
import pandas as pd
import pytest
from PIL import Image

from catalog_schemas.tables import IMAGES, REJECTS
from tagger.config import IngestConfig
from tagger.ingest.run import CatalogError, ingest_catalog
from tagger.lake import REJECTS_PATH, read_products
from tagger.demo.sample import generate_catalog
from tagger.io.storage import open_storage, read_table, read_tables
from tests.conftest import DEMO_NO_TEXT, DEMO_TAXONOMY

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
GOOD = 6


def _encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A decompression bomb: a PNG declaring width x height with almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def _palette_png() -> bytes:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, *BLUE] + [0] * 254 * 3)
    img.paste(1, (8, 0, 16, 16))  # left half index 0 (transparent black), right half blue
    return _encode(img, "PNG", transparency=0)


def _exif_rotated() -> bytes:
    """40 wide x 20 high, red block top-left, EXIF orientation 6 (display rotated 90 cw)."""
    img = Image.new("RGB", (40, 20), WHITE)
    img.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(img, "JPEG", quality=95, exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN, BLUE)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _truncated_jpeg() -> bytes:
    import numpy as np

    arr = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(arr), "JPEG", quality=90)
    return data[: len(data) // 2]


HTML = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>gone</body></html>\n"

# id -> image bytes written to images/<id>.<ext>; None: no file.
IMAGES_BY_ID = {
    "TRUNCATED": ("jpg", _truncated_jpeg()),
    "ZERO": ("jpg", b""),
    "HTML": ("jpg", HTML),
    "TINY": ("png", _encode(Image.new("RGB", (1, 1), RED), "PNG")),
    "BOMB": ("png", _png_header_only(100_000, 100_000)),
    "CMYK": ("jpg", _encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)),
    "PNG16": ("png", _encode(Image.new("I;16", (32, 32), 32896), "PNG")),
    "PALETTE": ("png", _palette_png()),
    "EXIF": ("jpg", _exif_rotated()),
    "GIF": ("gif", _animated_gif()),
    "WEBP": ("webp", _encode(Image.new("RGB", (40, 24), GREEN), "WEBP", lossless=True)),
    "HUGE-FILE": ("jpg", b"\xff\xd8\xff\xe0" + os.urandom(150_000)),  # over the (test) size limit
}
TEST_MAX_IMAGE_BYTES = 100_000

# Row id -> (stage, reason) every bad row must end as.
EXPECTED_REJECTS = {
    "TRUNCATED": ("decode", "truncated"),
    "ZERO": ("decode", "empty"),
    "HTML": ("decode", "not_an_image"),
    "TINY": ("decode", "too_small"),
    "BOMB": ("decode", "too_large"),
    "MISSING": ("fetch", "missing_file"),  # on S3: a missing key
    "HUGE-FILE": ("fetch", "file_too_large"),  # refused before it is read
    "ESCAPE": ("validate", "image_outside_root"),
    "ABSOLUTE": ("validate", "image_outside_root"),
    "FILEURI": ("validate", "bad_image_uri"),
    "HTTP": ("validate", "bad_image_uri"),
    "DUP-CONFLICT": ("validate", "conflicting_duplicate"),
    "DUP-SAME": ("validate", "duplicate_id"),
    "UNKNOWN-LABEL": ("validate", "unknown_label"),
    "TWO-SINGLE": ("validate", "unknown_label"),
    "NO-ID": ("validate", "missing_id"),
    "NO-IMAGE": ("validate", "missing_image"),
}
LOCAL_ONLY_REJECTS = {"SYMLINK-OUT": ("validate", "image_outside_root"),
                      "DIRECTORY": ("fetch", "not_a_file")}
ACCEPTED_ODD = ["CMYK", "PNG16", "PALETTE", "EXIF", "GIF", "WEBP"]


def build_corpus(root: Path, *, symlink: bool) -> Path:
    """catalog.csv with GOOD good rows, then every bad or odd row; returns its path."""
    catalog = generate_catalog(root, n_products=GOOD, seed=5, image_size=48, bad_rows=False)
    df = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    base = dict(df.iloc[0])  # valid labels to reuse
    rows = []
    for pid, (ext, data) in IMAGES_BY_ID.items():
        (root / "images" / f"{pid}.{ext}").write_bytes(data)
        rows.append(base | {"id": pid, "image": f"images/{pid}.{ext}"})
    other_colour = "blue" if base["colour"] != "blue" else "red"
    rows += [
        base | {"id": "MISSING", "image": "images/MISSING.jpg"},
        base | {"id": "ESCAPE", "image": "../../etc/passwd"},
        base | {"id": "ABSOLUTE", "image": "/etc/passwd"},
        base | {"id": "FILEURI", "image": "file:///etc/passwd"},
        base | {"id": "HTTP", "image": "http://127.0.0.1:9/x.jpg"},
        dict(df.iloc[1]) | {"colour": other_colour if df.iloc[1]["colour"] != other_colour else "green"},
        dict(df.iloc[2]),
        base | {"id": "UNKNOWN-LABEL", "colour": "purple"},
        base | {"id": "TWO-SINGLE", "colour": "red|blue"},
        base | {"id": "", "image": f"images/{base['id']}.jpg"},
        base | {"id": "NO-IMAGE", "image": ""},
    ]
    dup_conflict, dup_same = df.iloc[1]["id"], df.iloc[2]["id"]
    rows[-6]["_tag"], rows[-5]["_tag"] = "DUP-CONFLICT", "DUP-SAME"
    if symlink:
        os.symlink("/etc/hostname", root / "images" / "SYMLINK-OUT.jpg")
        rows.append(base | {"id": "SYMLINK-OUT", "image": "images/SYMLINK-OUT.jpg"})
        (root / "images" / "DIRECTORY.jpg").mkdir()
        rows.append(base | {"id": "DIRECTORY", "image": "images/DIRECTORY.jpg"})
    out = pd.DataFrame(rows)
    tags = out.pop("_tag")
    pd.concat([df, out]).to_csv(catalog, index=False)
    # The duplicates carry the ids of good rows: remember which row number is which.
    first_bad = GOOD
    build_corpus.row_names = {first_bad + i: (t if isinstance(t, str) else rows[i]["id"] or "NO-ID")
                              for i, t in enumerate(tags)}
    build_corpus.dups = (dup_conflict, dup_same)
    build_corpus.first_colour = df.iloc[1]["colour"]
    return catalog


def _stored_images(lake: str) -> dict[str, Image.Image]:
    storage = open_storage(lake)
    products = read_products(storage).to_pylist()
    images = read_tables(storage, "catalog/images", IMAGES)
    by_hash = dict(zip(images["image_hash"].to_pylist(), images["data"].to_pylist()))
    return {p["product_id"]: Image.open(io.BytesIO(by_hash[p["image_hash"]])).convert("RGB")
            for p in products}


def _close(pixel, expected, tol=30) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def _upload_folder(folder: Path, bucket_uri: str, prefix: str) -> None:
    s3 = boto3.client("s3")
    bucket = bucket_uri.removeprefix("s3://")
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path, monkeypatch):
    """(catalog URI, lake URI, expected rejects) with catalog, images and lake local or on S3."""
    monkeypatch.setattr("tagger.ingest.source.MAX_IMAGE_BYTES", TEST_MAX_IMAGE_BYTES)
    local = request.param == "local"
    catalog = build_corpus(tmp_path / "export", symlink=local)
    expected = EXPECTED_REJECTS | (LOCAL_ONLY_REJECTS if local else {})
    if local:
        return str(catalog), str(tmp_path / "lake"), expected
    bucket = request.getfixturevalue("s3_bucket")
    _upload_folder(catalog.parent, bucket, "exports")
    return f"{bucket}/exports/catalog.csv", f"{bucket}/lake", expected


def test_every_bad_input_is_a_specific_reject_and_every_good_row_is_ingested(where):
    catalog, lake, expected = where
    result = ingest_catalog(catalog, DEMO_TAXONOMY, lake, IngestConfig(max_reject_fraction=1.0, workers=4))
    rejects = read_table(open_storage(lake), REJECTS_PATH, REJECTS).to_pylist()
    names = build_corpus.row_names
    got = {names[r["row_number"]]: (r["stage"], r["reason"]) for r in rejects}
    assert got == expected
    assert all(r["detail"] and r["source"] == catalog for r in rejects)
    dup_conflict, dup_same = build_corpus.dups
    assert {r["product_id"] for r in rejects if r["reason"].endswith("duplicate")} >= {dup_conflict}
    assert result.rejected == len(expected)

    products = {p["product_id"]: p for p in read_products(open_storage(lake)).to_pylist()}
    good = {f"P{i:05d}" for i in range(1, GOOD + 1)}
    assert set(products) == good | set(ACCEPTED_ODD)
    # the first of two conflicting rows wins; the later one is the reject
    assert dict(products[dup_conflict]["labels"])["colour"] == [build_corpus.first_colour]


def test_odd_images_are_stored_upright_rgb_and_right(where):
    catalog, lake, _ = where
    ingest_catalog(catalog, DEMO_TAXONOMY, lake, IngestConfig(max_reject_fraction=1.0))
    stored = _stored_images(lake)
    assert _close(stored["CMYK"].getpixel((16, 16)), RED, tol=60)
    assert _close(stored["PNG16"].getpixel((16, 16)), (128, 128, 128), tol=4)  # scaled, not clipped white
    assert _close(stored["PALETTE"].getpixel((2, 8)), WHITE, tol=12)  # transparent -> white
    assert _close(stored["PALETTE"].getpixel((13, 8)), BLUE, tol=40)
    exif = stored["EXIF"]
    assert exif.size == (20, 40)  # rotated upright: portrait
    assert _close(exif.getpixel((16, 3)), RED, tol=60)  # the block moved to the top right
    assert _close(exif.getpixel((3, 36)), WHITE, tol=40)
    assert _close(stored["GIF"].getpixel((8, 8)), RED, tol=30)  # first frame
    assert stored["WEBP"].size == (40, 24) and _close(stored["WEBP"].getpixel((20, 12)), GREEN, tol=30)
    for img in stored.values():
        assert img.mode == "RGB" and max(img.size) <= 512


def test_rerun_of_the_corpus_adds_nothing(where):
    catalog, lake, expected = where
    config = IngestConfig(max_reject_fraction=1.0)
    first = ingest_catalog(catalog, DEMO_TAXONOMY, lake, config)
    again = ingest_catalog(catalog, DEMO_TAXONOMY, lake, config)
    assert again.new == again.changed == 0 and again.unchanged == first.products
    assert again.shards_written == [] and not again.products_written
    assert read_table(open_storage(lake), REJECTS_PATH, REJECTS).num_rows == len(expected)


def test_default_guard_refuses_a_mostly_bad_catalog(where):
    catalog, lake, expected = where
    with pytest.raises(CatalogError, match=r"rows were rejected.*max_reject_fraction=0.5"):
        ingest_catalog(catalog, DEMO_TAXONOMY, lake)
    storage = open_storage(lake)
    assert not storage.exists("catalog/products/products.parquet")
    assert read_table(storage, REJECTS_PATH, REJECTS).num_rows == len(expected)


# --- catalog-level problems: a clear error, nothing written ------------------------------

CATALOG_PROBLEMS = [
    # (file name, content, error pattern); test_ingest.py covers the plain CSV cases locally
    ("catalog.csv", b"", "cannot be parsed|no rows"),
    ("catalog.csv", b"id,category,image,colour\n", "has no rows"),
    ("catalog.csv", b"id,category,colour\n1,tops,red\n", r"lacks columns 'image'"),
    ("catalog.csv", b"id,category,image\n1,tops,a.jpg\n", "lacks every label column"),
    ("catalog.csv", b"product_id,category,picture,colour\n1,tops,a.jpg,red\n",
     r"lacks columns 'id'.*'image'"),
    ("catalog.csv", "id,category,image,colour\n1,tops,a.jpg,red\n".encode("utf-16"), "not UTF-8"),
    ("catalog.csv", "id,category,image,colour\n1,tops,a.jpg,ro\xe9\n".encode("latin-1"), "not UTF-8"),
    ("catalog.jsonl", b'{"id": "1", "image": "a.jpg", "colour": "r\xe9d"}\n', "not UTF-8|cannot be parsed"),
    ("catalog.jsonl", b"{not json\n", "cannot be parsed"),
    ("catalog.parquet", b"PAR1 but not really", "cannot be parsed"),
]


@pytest.mark.parametrize("name, content, message", CATALOG_PROBLEMS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CATALOG_PROBLEMS)])
def test_catalog_level_problems_on_s3_write_nothing(s3_bucket, name, content, message):
    s3 = boto3.client("s3")
    bucket = s3_bucket.removeprefix("s3://")
    s3.put_object(Bucket=bucket, Key=f"exports/{name}", Body=content)
    with pytest.raises(CatalogError, match=message):
        ingest_catalog(f"{s3_bucket}/exports/{name}", DEMO_NO_TEXT, f"{s3_bucket}/lake")
    assert open_storage(f"{s3_bucket}/lake").list() == []


def test_missing_catalog_on_s3(s3_bucket):
    with pytest.raises(CatalogError, match="does not exist"):
        ingest_catalog(f"{s3_bucket}/exports/nope.csv", DEMO_TAXONOMY, f"{s3_bucket}/lake")
    assert open_storage(f"{s3_bucket}/lake").list() == []


def test_catalog_problem_leaves_an_existing_lake_untouched(catalog, tmp_path):
    lake = tmp_path / "lake"
    ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    before = {p: p.stat().st_mtime_ns for p in lake.rglob("*")}
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"ID,Category,Image,Colour\n1,tops,a.jpg,red\n")
    with pytest.raises(CatalogError, match="did you mean 'ID'"):
        ingest_catalog(str(broken), DEMO_TAXONOMY, str(lake))
    assert {p: p.stat().st_mtime_ns for p in lake.rglob("*")} == before
    shutil.rmtree(lake)
