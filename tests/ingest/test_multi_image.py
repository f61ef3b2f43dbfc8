"""Several images per product: mapped as a list of columns or templates, a list column
(JSON Lines, Parquet) or a text cell split by image_separator; every image fetched, stored
and change-checked like the one image of old; a bad image left out of a product that has
good ones (a reject row with product_kept), a product with none rejected; the extra images'
shards kept by vacuum; and the tables of one process for any chunk size and in parts."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_schemas.tables import PRODUCTS, REJECTS
from catalog_schemas.taxonomy import load_taxonomy
from tagger.config import IngestConfig
from tagger.ingest.run import ingest_catalog
from tagger.ingest.sharded import ingest_in_parts
from tagger.io.storage import open_storage, read_table
from tagger.lake import REJECTS_PATH, image_shard_path, read_products, read_released
from tagger.ops.vacuum import vacuum_lake
from tests.conftest import DEMO_TAXONOMY, SMALL_TAXONOMY
from tests.ingest.test_chunks import _counts, _export, _read, _tables, _write

LATER = datetime.now(timezone.utc) + timedelta(days=2)
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink", "grey"]


def _taxonomy(image, separator=None, base=SMALL_TAXONOMY):
    data = (load_taxonomy(base) if isinstance(base, str) else base).to_dict()
    data["catalog"]["image"] = image
    if separator:
        data["catalog"]["image_separator"] = separator
    return load_taxonomy(data)


def _images(folder: Path, *names: str) -> None:
    """A small image of its own colour per name (distinct bytes); a name ending in .bad.jpg
    holds an HTML page instead."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        if name.endswith(".bad.jpg"):
            (folder / "images" / name).write_text("<html>not an image</html>")
        else:
            Image.new("RGB", (24, 24), COLOURS[k % len(COLOURS)]).save(folder / "images" / name)


def _catalog(folder: Path, rows: list[dict], fmt: str = "csv") -> Path:
    """An export of these rows (id, colour, features and the image columns given)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"category": "tops", "colour": "red", "features": "logo"} | r for r in rows]
    path = folder / f"catalog.{fmt}"
    if fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _ingest(export: Path, taxonomy, lake: Path, **config):
    config = IngestConfig(**({"max_reject_fraction": 1.0} | config))
    return ingest_catalog(str(export), taxonomy, str(lake), config)


def _products(lake: Path) -> dict[str, dict]:
    return {p["product_id"]: p for p in read_products(open_storage(lake)).to_pylist()}


def _names(product: dict) -> list[str]:
    """The file names of a product's images: image_uri first, then more_images."""
    return [Path(product["image_uri"]).name] + [Path(i["image_uri"]).name for i in product["more_images"] or ()]


def _rejects(lake: Path) -> list[dict]:
    return read_table(open_storage(lake), REJECTS_PATH, REJECTS).to_pylist()


def _files(lake: Path) -> dict[str, int]:
    return {str(p.relative_to(lake)): p.stat().st_mtime_ns for p in lake.rglob("*") if p.is_file()}


# --- how images are mapped --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_list_column_gives_every_image_in_order(fmt, tmp_path):
    _images(tmp_path, "a1.jpg", "a2.jpg", "a3.jpg", "b1.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": ["images/a1.jpg", "images/a2.jpg", " images/a3.jpg "]},
                                 {"id": "B", "photos": ["images/b1.jpg", "", None]}], fmt)
    result = _ingest(export, _taxonomy("photos"), tmp_path / "lake")
    products = _products(tmp_path / "lake")
    assert (result.products, result.rejected, result.images_stored) == (2, 0, 4)
    assert _names(products["A"]) == ["a1.jpg", "a2.jpg", "a3.jpg"]
    assert products["B"]["more_images"] is None and _names(products["B"]) == ["b1.jpg"]
    a = products["A"]
    assert len({a["image_hash"], *(i["image_hash"] for i in a["more_images"])}) == 3
    assert all(i["image_version"] and i["image_shard"] for i in a["more_images"])


def test_a_csv_cell_is_split_by_image_separator(tmp_path):
    _images(tmp_path, "a1.jpg", "a2.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": "images/a1.jpg | images/a2.jpg|"}])
    _ingest(export, _taxonomy("photos", separator="|"), tmp_path / "split")
    assert _names(_products(tmp_path / "split")["A"]) == ["a1.jpg", "a2.jpg"]
    # without a separator the cell is one URI, which does not exist
    result = _ingest(export, _taxonomy("photos"), tmp_path / "whole")
    assert result.products == 0 and result.reject_reasons == {"missing_file": 1}


def test_several_columns_and_templates_in_mapping_order(tmp_path):
    _images(tmp_path, "A-front.jpg", "A-side.jpg", "A-back.jpg", "B-back.jpg")
    export = _catalog(tmp_path, [{"id": "A", "front": "images/A-front.jpg", "side": "images/A-side.jpg"},
                                 {"id": "B", "front": "", "side": ""}])
    taxonomy = _taxonomy(["front", "images/{id}-back.jpg", "side"])
    result = _ingest(export, taxonomy, tmp_path / "lake")
    products = _products(tmp_path / "lake")
    assert result.products == 2
    assert _names(products["A"]) == ["A-front.jpg", "A-back.jpg", "A-side.jpg"]
    assert _names(products["B"]) == ["B-back.jpg"] and products["B"]["more_images"] is None


def test_a_row_without_any_image_is_missing_image(tmp_path):
    export = _catalog(tmp_path, [{"id": "A", "front": "", "side": " "}])
    _ingest(export, _taxonomy(["front", "side"]), tmp_path / "lake")
    [reject] = _rejects(tmp_path / "lake")
    assert (reject["reason"], reject["product_kept"]) == ("missing_image", False)
    assert "'front'" in reject["detail"] and "'side'" in reject["detail"]


def test_duplicate_uris_collapse_to_the_first(tmp_path):
    _images(tmp_path, "a1.jpg", "a2.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": ["images/a1.jpg", "images/./a1.jpg", "images/a2.jpg",
                                                        "images/a2.jpg"]}], "jsonl")
    result = _ingest(export, _taxonomy("photos"), tmp_path / "lake")
    assert _names(_products(tmp_path / "lake")["A"]) == ["a1.jpg", "a2.jpg"]
    assert (result.images_fetched, result.images_stored) == (2, 2)


def test_a_duplicate_id_compares_every_image(tmp_path):
    _images(tmp_path, "a1.jpg", "a2.jpg", "a3.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": ["images/a1.jpg", "images/a2.jpg"]},
                                 {"id": "A", "photos": ["images/a1.jpg", "images/a2.jpg"]},
                                 {"id": "A", "photos": ["images/a1.jpg", "images/a3.jpg"]}], "jsonl")
    _ingest(export, _taxonomy("photos"), tmp_path / "lake")
    assert [r["reason"] for r in _rejects(tmp_path / "lake")] == ["duplicate_id", "conflicting_duplicate"]


# --- bad images -------------------------------------------------------------------------------


def test_a_bad_extra_image_is_left_out_and_the_product_kept(tmp_path):
    _images(tmp_path, "a1.jpg", "a2.bad.jpg", "a3.jpg", "b1.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": ["images/a1.jpg", "images/a2.bad.jpg", "images/a3.jpg"]},
                                 {"id": "B", "photos": ["images/b1.jpg"]}], "jsonl")
    result = _ingest(export, _taxonomy("photos"), tmp_path / "lake", max_reject_fraction=0.0)
    assert (result.products, result.rejected, result.images_rejected) == (2, 0, 1)
    assert result.reject_reasons == {"not_an_image": 1}
    assert _names(_products(tmp_path / "lake")["A"]) == ["a1.jpg", "a3.jpg"]
    [reject] = _rejects(tmp_path / "lake")
    assert (reject["row_number"], reject["product_id"], reject["stage"], reject["reason"],
            reject["product_kept"]) == (0, "A", "decode", "not_an_image", True)
    assert "a2.bad.jpg" in reject["detail"] and "ingested with its 2 other images" in reject["detail"]


def test_the_first_good_image_becomes_the_products_image(tmp_path):
    _images(tmp_path, "a2.bad.jpg", "a3.jpg", "a4.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": ["images/a1.jpg", "images/a2.bad.jpg",
                                                        "images/a3.jpg", "images/a4.jpg"]}], "jsonl")
    result = _ingest(export, _taxonomy("photos"), tmp_path / "lake")
    product = _products(tmp_path / "lake")["A"]
    assert _names(product) == ["a3.jpg", "a4.jpg"]
    assert product["image_version"] and product["image_shard"]
    assert [(r["reason"], r["product_kept"]) for r in _rejects(tmp_path / "lake")] == [
        ("missing_file", True), ("not_an_image", True)]
    assert (result.rejected, result.images_rejected) == (0, 2)


def test_a_product_without_a_good_image_is_one_reject(tmp_path):
    _images(tmp_path, "a2.bad.jpg", "b1.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": ["images/a1.jpg", "images/a2.bad.jpg", "../a3.jpg"]},
                                 {"id": "B", "photos": ["images/b1.jpg"]}], "jsonl")
    result = _ingest(export, _taxonomy("photos"), tmp_path / "lake")
    assert (result.products, result.rejected, result.images_rejected) == (1, 1, 0)
    [reject] = _rejects(tmp_path / "lake")
    assert (reject["product_id"], reject["stage"], reject["reason"], reject["product_kept"]) == (
        "A", "fetch", "missing_file", False)
    assert "a1.jpg" in reject["detail"] and "its 2 other images failed too" in reject["detail"]


def test_an_image_outside_the_folder_is_left_out_not_the_product(tmp_path):
    _images(tmp_path, "a1.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": ["../../etc/passwd", "images/a1.jpg"]},
                                 {"id": "B", "photos": ["../../etc/passwd", "/etc/passwd"]}], "jsonl")
    _ingest(export, _taxonomy("photos"), tmp_path / "lake")
    assert list(_products(tmp_path / "lake")) == ["A"] and _names(_products(tmp_path / "lake")["A"]) == ["a1.jpg"]
    assert [(r["product_id"], r["stage"], r["reason"], r["product_kept"]) for r in _rejects(tmp_path / "lake")] == [
        ("A", "validate", "image_outside_root", True), ("B", "validate", "image_outside_root", False)]


def test_the_reject_guard_counts_rows_not_images(tmp_path):
    """Every product loses an image, none is dropped: a guard of 0 lets the run through."""
    _images(tmp_path, "a1.jpg", "b1.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": "images/a1.jpg|images/gone.jpg"},
                                 {"id": "B", "photos": "images/b1.jpg|images/gone.jpg"}])
    result = _ingest(export, _taxonomy("photos", separator="|"), tmp_path / "lake", max_reject_fraction=0.0)
    assert (result.products, result.rejected, result.images_rejected) == (2, 0, 2)


def test_a_failed_fetch_keeps_the_previous_row_only_of_a_product_not_ingested(tmp_path, monkeypatch):
    from tagger.ingest.source import ImageSource

    _images(tmp_path, "a1.jpg", "a2.jpg", "b1.jpg", "b2.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": "images/a1.jpg|images/a2.jpg"},
                                 {"id": "B", "photos": "images/b1.jpg|images/b2.jpg"}])
    taxonomy, lake = _taxonomy("photos", separator="|"), tmp_path / "lake"
    _ingest(export, taxonomy, lake)
    before = _products(lake)
    real_read = ImageSource.read

    def flaky(self, uri):
        if uri.endswith(("a2.jpg", "b1.jpg", "b2.jpg")):
            raise ConnectionError("connection reset by peer")
        return real_read(self, uri)

    monkeypatch.setattr(ImageSource, "read", flaky)
    monkeypatch.setattr(ImageSource, "version", lambda self, uri: None)  # force reads
    result = _ingest(export, taxonomy, lake)
    after = _products(lake)
    assert after["B"] == before["B"]  # no image came: the previous row stays
    assert _names(after["A"]) == ["a1.jpg"] and result.changed == 1  # ingested without a2
    assert [(r["product_id"], r["reason"], r["product_kept"]) for r in _rejects(lake)] == [
        ("A", "fetch_error", True), ("B", "fetch_error", False)]


# --- change checks and re-ingests -------------------------------------------------------------


def test_extra_images_are_change_checked_like_the_first(tmp_path):
    _images(tmp_path, "a1.jpg", "a2.jpg", "a3.jpg", "b1.jpg")
    rows = [{"id": "A", "photos": "images/a1.jpg|images/a2.jpg|images/a3.jpg"}, {"id": "B", "photos": "images/b1.jpg"}]
    export = _catalog(tmp_path, rows)
    taxonomy, lake = _taxonomy("photos", separator="|"), tmp_path / "lake"
    _ingest(export, taxonomy, lake)
    first = _products(lake)

    before = _files(lake)
    again = _ingest(export, taxonomy, lake)  # unchanged: nothing read, nothing written
    assert (again.images_fetched, again.changed, again.products_written) == (0, 0, False)
    history = again.rejects_history.removeprefix(str(lake) + "/")
    assert {k: v for k, v in _files(lake).items() if k != history} == before

    Image.new("RGB", (24, 24), "navy").save(tmp_path / "images" / "a3.jpg")  # an extra image redrawn
    changed = _ingest(export, taxonomy, lake)
    now = _products(lake)
    assert (changed.images_fetched, changed.images_stored, changed.changed, changed.unchanged) == (1, 1, 1, 1)
    assert now["A"]["updated_at"] > first["A"]["updated_at"] and now["B"] == first["B"]
    assert now["A"]["more_images"][0] == first["A"]["more_images"][0]
    assert now["A"]["more_images"][1]["image_hash"] != first["A"]["more_images"][1]["image_hash"]

    # an extra image that only moved (same bytes, another name) is not a change
    shutil.copy(tmp_path / "images" / "a2.jpg", tmp_path / "images" / "a2-moved.jpg")
    rows[0]["photos"] = "images/a1.jpg|images/a2-moved.jpg|images/a3.jpg"
    _catalog(tmp_path, rows)
    moved = _ingest(export, taxonomy, lake)
    assert (moved.changed, moved.images_stored, moved.products_written) == (0, 0, True)
    assert _products(lake)["A"]["updated_at"] == now["A"]["updated_at"]
    assert _names(_products(lake)["A"]) == ["a1.jpg", "a2-moved.jpg", "a3.jpg"]

    # a removed extra image and a new one are changes; so is an order that shows other bytes first
    for photos in ("images/a1.jpg|images/a3.jpg", "images/a1.jpg|images/a3.jpg|images/b1.jpg",
                   "images/a1.jpg|images/b1.jpg|images/a3.jpg"):
        rows[0]["photos"] = photos
        _catalog(tmp_path, rows)
        assert _ingest(export, taxonomy, lake).changed == 1
    rows[0]["photos"] = "images/a1.jpg"
    _catalog(tmp_path, rows)
    assert _ingest(export, taxonomy, lake).changed == 1 and _products(lake)["A"]["more_images"] is None


def test_an_image_shown_second_reuses_the_products_previous_first(tmp_path):
    """The change check looks at every previous image of the product: swapping the first and
    an extra image reads nothing again (both versions known) but is a change."""
    _images(tmp_path, "a1.jpg", "a2.jpg")
    rows = [{"id": "A", "photos": "images/a1.jpg|images/a2.jpg"}]
    export, taxonomy, lake = _catalog(tmp_path, rows), _taxonomy("photos", separator="|"), tmp_path / "lake"
    _ingest(export, taxonomy, lake)
    rows[0]["photos"] = "images/a2.jpg|images/a1.jpg"
    _catalog(tmp_path, rows)
    result = _ingest(export, taxonomy, lake)
    assert (result.images_fetched, result.changed) == (0, 1)
    assert _names(_products(lake)["A"]) == ["a2.jpg", "a1.jpg"]


def test_an_extra_image_stored_before_is_not_stored_again(tmp_path):
    """Another product now showing A's extra image finds its bytes among the stored ones."""
    _images(tmp_path, "a1.jpg", "a2.jpg", "b1.jpg")
    rows = [{"id": "A", "photos": "images/a1.jpg|images/a2.jpg"}, {"id": "B", "photos": "images/b1.jpg"}]
    export, taxonomy, lake = _catalog(tmp_path, rows), _taxonomy("photos", separator="|"), tmp_path / "lake"
    _ingest(export, taxonomy, lake)
    rows[1]["photos"] = "images/b1.jpg|images/a2.jpg"
    _catalog(tmp_path, rows)
    result = _ingest(export, taxonomy, lake)
    assert (result.images_fetched, result.images_stored, result.shards_written, result.changed) == (1, 0, [], 1)
    products = _products(lake)
    assert products["B"]["more_images"][0]["image_shard"] == products["A"]["more_images"][0]["image_shard"]


def test_a_single_image_export_writes_the_tables_of_old(catalog, tmp_path):
    """No product has a second image: more_images is null throughout and every reject row
    dropped its row; a mapping given as a one-entry list is the same mapping."""
    lake = tmp_path / "lake"
    result = ingest_catalog(str(catalog), DEMO_TAXONOMY, str(lake))
    products = read_products(open_storage(lake))
    assert products.schema.equals(PRODUCTS, check_metadata=False)
    assert products["more_images"].null_count == products.num_rows == 60
    assert [r["product_kept"] for r in _rejects(lake)] == [False] * 3 and result.images_rejected == 0
    listed = _taxonomy(["image"], base=DEMO_TAXONOMY)
    assert listed.catalog.image == "image"
    again = ingest_catalog(str(catalog), listed, str(lake))
    assert (again.changed, again.products_written) == (0, False)


# --- shards in use ----------------------------------------------------------------------------


def test_vacuum_keeps_the_shards_only_extra_images_are_in(tmp_path):
    _images(tmp_path, "a1.jpg", "a2.jpg", "a3.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": "images/a1.jpg|images/a2.jpg|images/a3.jpg"}])
    lake = tmp_path / "lake"
    result = _ingest(export, _taxonomy("photos", separator="|"), lake, shard_size=1)
    product = _products(lake)["A"]
    extra = {i["image_shard"] for i in product["more_images"]}
    assert len(result.shards_written) == 3 and product["image_shard"] not in extra and len(extra) == 2
    assert read_released(open_storage(lake)) == {}  # ingest counts them as named
    assert vacuum_lake(str(lake), now=LATER).deleted == []
    assert all((lake / image_shard_path(s)).exists() for s in extra)


def test_a_rebuild_finds_the_extra_images_in_their_shards(tmp_path):
    _images(tmp_path, "a1.jpg", "a2.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": "images/a1.jpg|images/a2.jpg"}])
    taxonomy, lake = _taxonomy("photos", separator="|"), tmp_path / "lake"
    _ingest(export, taxonomy, lake, shard_size=1)
    first = _products(lake)
    rebuilt = _ingest(export, taxonomy, lake, shard_size=1, rebuild=True)
    assert (rebuilt.images_stored, rebuilt.shards_written) == (0, [])
    assert _products(lake)["A"]["more_images"] == first["A"]["more_images"]


# --- the same tables for any chunk size, and in parts -----------------------------------------


def _multi_export(tmp_path: Path) -> Path:
    """test_chunks' export (shuffled, duplicates, bad rows, a shared image) with more images
    per product in a '|' column: others' images, bad ones, a first image that is bad."""
    export = _export(tmp_path, "csv")
    df = _read(export)
    folder = export.parent / "images"
    (folder / "broken.jpg").write_text("not an image")
    for k, pid in enumerate(f"P{i:05d}" for i in range(1, 25)):
        Image.new("RGB", (40, 40), COLOURS[k % len(COLOURS)]).save(folder / f"{pid}-back.jpg")
    more = {pid: f"images/{pid}-back.jpg" for pid in df.id}
    more |= {"P00003": "images/P00004.jpg|images/P00003-back.jpg",  # another product's image
             "P00008": "images/broken.jpg|images/P00008-back.jpg",  # a bad extra image
             "P00009": "images/gone.jpg",                           # a missing one
             "P00010": "",                                         # none
             "BAD-MISSING": "images/broken.jpg"}                   # none good at all
    df["more"] = df.id.map(more).fillna("")
    df.loc[df.id == "P00012", "image"] = "images/broken.jpg"  # the first image bad
    _write(df, export)
    return export


MULTI = _taxonomy(["image", "more"], separator="|", base=DEMO_TAXONOMY)


def _same(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    assert ta["products"].equals(tb["products"]) and ta["rejects"].equals(tb["rejects"])
    assert ta["shards"] == tb["shards"]  # same names, same bytes


def test_chunks_and_parts_give_the_tables_and_shards_of_one_process(tmp_path):
    export = _multi_export(tmp_path)

    def config(chunk_size):
        return IngestConfig(chunk_size=chunk_size, shard_size=5, max_reject_fraction=0.5)

    def night(run_id):
        results = {size: ingest_catalog(str(export), MULTI, str(tmp_path / f"lake-{size}"), config(size),
                                        run_id=run_id) for size in (10_000, 4, 1)}
        results["parts"] = ingest_in_parts(str(export), MULTI, str(tmp_path / "lake-parts"), config(4),
                                           run_id=run_id, part_rows=3)
        counts = {k: _counts(r) for k, r in results.items()}
        assert all(c == counts[10_000] for c in counts.values()), counts
        for k in (4, 1, "parts"):
            _same(tmp_path / "lake-10000", tmp_path / f"lake-{k}")
        return results[10_000]

    first = night("night1")
    products = _products(tmp_path / "lake-10000")
    assert (first.products, first.rejected, first.images_rejected) == (24, 5, 3)
    assert _names(products["P00003"]) == ["P00003.jpg", "P00004.jpg", "P00003-back.jpg"]
    assert _names(products["P00012"]) == ["P00012-back.jpg"]
    assert _names(products["P00010"]) == ["P00010.jpg"] and products["P00010"]["more_images"] is None
    kept = [(r["product_id"], r["reason"]) for r in _rejects(tmp_path / "lake-10000") if r["product_kept"]]
    assert sorted(kept) == [("P00008", "not_an_image"), ("P00009", "missing_file"), ("P00012", "not_an_image")]

    # the next night: an extra image redrawn, one removed, one product gone
    df = _read(export)
    Image.new("RGB", (40, 40), "navy").save(export.parent / "images" / "P00005-back.jpg")
    df.loc[df.id == "P00006", "more"] = ""
    _write(df[df.id != "P00011"], export)
    again = night("night2")
    assert (again.changed, again.removed, again.images_stored) == (2, 1, 1)
    # and once more: nothing changes, nothing is written
    assert not night("night2").products_written
