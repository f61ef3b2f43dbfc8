"""A product's text: cleaned exactly (tagger.ingest.text), carried into the products table,
a damaged cell rejected as its own row, a new title a changed product, and a products table
written before the text column read as null text without changing any product."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_schemas.tables import REJECTS
from catalog_schemas.taxonomy import load_taxonomy
from tagger.config import IngestConfig
from tagger.ingest.export import CatalogError, read_catalog_chunks
from tagger.ingest.products import PreviousProducts
from tagger.ingest.run import ingest_catalog
from tagger.ingest.text import MAX_TEXT_CHARS, clean_text, compose_text, undecodable
from tagger.io.storage import open_storage, read_table
from tagger.lake import PRODUCTS_PATH, REJECTS_PATH, read_products
from tests.conftest import DEMO_NO_TEXT, DEMO_TAXONOMY


def _with_text(text, base=DEMO_TAXONOMY):
    data = load_taxonomy(base).to_dict()
    data["catalog"]["text"] = text
    return load_taxonomy(data)


TITLED = _with_text("title")

# --- clean_text, compose_text, undecodable: exact cases -------------------------------------


@pytest.mark.parametrize("value, want", [
    (None, None),
    ("", None),
    ("  \t\n ", None),
    ("Blue shirt", "Blue shirt"),
    ("  Blue \t\n  shirt  ", "Blue shirt"),
    ("Cafe\u0301 au lait", "Caf\u00e9 au lait"),  # NFC: e + combining acute -> é
    ("Blue\x00shirt\x1b[0m", "Blue shirt [0m"),  # Cc
    ("zero\u200bwidth soft\u00adhyphen \u202eRTL\u202c", "zero width soft hyphen RTL"),  # Cf
    ("private\ue000use", "private use"),  # Co
    ("\u00a0non-breaking\u2003spaces\u2028line", "non-breaking spaces line"),  # Zs, Zl
    ("\x00\u200b\ue000", None),  # nothing left
    ("T-shirt \u2013 100 % coton, \u00e9t\u00e9 \U0001F455", "T-shirt \u2013 100 % coton, \u00e9t\u00e9 \U0001F455"),
])
def test_clean_text(value, want):
    assert clean_text(value) == (want, False)


def test_clean_text_cuts_long_text_at_the_last_space_within_the_limit():
    assert clean_text("aaa bbb ccc", limit=7) == ("aaa bbb", True)  # a space right at the limit
    assert clean_text("aaa bbb ccc", limit=9) == ("aaa bbb", True)
    assert clean_text("aaa bbb ccc", limit=11) == ("aaa bbb ccc", False)
    assert clean_text("aaaaaaaaaa bb", limit=4) == ("aaaa", True)  # no space: cut mid-word
    assert clean_text("aaa   bbb\n\nccc", limit=8) == ("aaa bbb", True)  # cut after collapsing
    words = " ".join(["word"] * 1000)  # 4999 characters
    text, truncated = clean_text(words)
    assert truncated and text == " ".join(["word"] * 400) and len(text) == MAX_TEXT_CHARS - 1
    assert clean_text(words[:MAX_TEXT_CHARS]) == (words[:MAX_TEXT_CHARS].rstrip(), False)


def test_compose_text_joins_the_non_empty_parts():
    row = {"brand": "Koto", "title": "Blue shirt", "description": None, "empty": "  ", "n": 7}
    assert compose_text(row, ["title"]) == "Blue shirt"
    assert compose_text(row, ["{brand} {title}", "description", "empty"]) == "Koto Blue shirt"
    assert compose_text(row, ["{description} {empty}", "title"]) == "Blue shirt"
    assert compose_text(row, ["{n}: {brand}", "missing"]) == "7: Koto"
    assert compose_text(row, ["description"]) == ""


@pytest.mark.parametrize("value, bad", [
    ("plain", False), ("caf\u00e9 \U0001F455", False), ("Ro\ufffd dress", True),
    ("Ro\udce9 dress", True), ("lone \ud800 high", True),
])
def test_undecodable(value, bad):
    assert undecodable(value) is bad


# --- ingest -----------------------------------------------------------------------------------


def _export(folder: Path, titles: list[bytes], fmt: str = "csv") -> Path:
    """A CSV export of len(titles) red tops with their own images, `titles` written as bytes."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = [b"id,category,image,article_type,colour,title"]
    for i, title in enumerate(titles):
        Image.new("RGB", (24, 24), (10 * i, 80, 120)).save(folder / "images" / f"{i}.jpg")
        lines.append(b"P%d,tops,images/%d.jpg,tshirt,red,%s" % (i, i, title))
    path = folder / "catalog.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _texts(lake: Path) -> dict[str, str | None]:
    products = read_products(open_storage(lake))
    return dict(zip(products["product_id"].to_pylist(), products["text"].to_pylist()))


def test_a_title_that_is_not_utf8_rejects_its_row_and_the_others_keep_their_text(tmp_path):
    export = _export(tmp_path / "export", [
        b"Blue  striped\ttee", "Caf\u00e9 dress".encode(), b"Ro\xe9 dress", b"", b'"tote, ""big"""',
    ])
    result = ingest_catalog(str(export), TITLED, str(tmp_path / "lake"))
    assert (result.rows, result.products, result.rejected) == (5, 4, 1)
    assert result.reject_reasons == {"text_encoding": 1}
    [reject] = read_table(open_storage(tmp_path / "lake"), REJECTS_PATH, REJECTS).to_pylist()
    assert (reject["row_number"], reject["product_id"], reject["stage"]) == (2, "P2", "validate")
    assert "column 'title'" in reject["detail"] and "re-export the catalog as UTF-8" in reject["detail"]
    assert _texts(tmp_path / "lake") == {"P0": "Blue striped tee", "P1": "Caf\u00e9 dress", "P3": None,
                                         "P4": 'tote, "big"'}


def test_a_jsonl_title_that_is_not_utf8_or_shows_a_replacement_rejects_its_row(tmp_path):
    export = _export(tmp_path / "export", [b"x", b"x", b"x"])
    lines = [b'{"id": "P0", "category": "tops", "image": "images/0.jpg", "colour": "red", "title": "Ro\xe9"}',
             b'{"id": "P1", "category": "tops", "image": "images/1.jpg", "colour": "red", "title": "Ro\\ufffd"}',
             b'{"id": "P2", "category": "tops", "image": "images/2.jpg", "colour": "red", "title": "Rot"}']
    jsonl = export.with_suffix(".jsonl")
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    result = ingest_catalog(str(jsonl), TITLED, str(tmp_path / "lake"), IngestConfig(max_reject_fraction=1.0))
    assert result.reject_reasons == {"text_encoding": 2} and _texts(tmp_path / "lake") == {"P2": "Rot"}


def test_bytes_that_are_not_utf8_outside_the_text_are_still_the_exports_error(tmp_path):
    export = _export(tmp_path / "export", [b"ok", b"ok"])
    export.write_bytes(export.read_bytes().replace(b"P1,tops", b"P1,t\xf6ps"))
    with pytest.raises(CatalogError, match=r"not UTF-8 \(row 1, column 'category'\)"):
        ingest_catalog(str(export), TITLED, str(tmp_path / "lake"))
    # a column both text and a label is not text only: the export's error too
    both = _with_text(["title", "colour"])
    row = b"P1,tops,images/1.jpg,tshirt,"
    export.write_bytes(export.read_bytes().replace(b"P1,t\xf6ps", b"P1,tops").replace(row + b"red", row + b"r\xe9d"))
    with pytest.raises(CatalogError, match=r"not UTF-8 \(row 1, column 'colour'\)"):
        ingest_catalog(str(export), both, str(tmp_path / "lake"))
    assert not (tmp_path / "lake").exists()


def test_chunks_keep_escaped_bytes_only_in_text_columns(tmp_path):
    export = _export(tmp_path / "export", [b"a", b"Ro\xe9"])
    [df] = read_catalog_chunks(str(export), text_columns=frozenset({"title"}))
    assert df["title"].tolist() == ["a", "Ro\udce9"]
    with pytest.raises(CatalogError, match=r"not UTF-8 \(row 1, column 'title'\)"):
        list(read_catalog_chunks(str(export)))


@pytest.mark.parametrize("text, missing", [
    ("title", "'title'"), ("{brand} {name}", "'brand'.*'name'"), (["title", "{id} {name}"], "'title'.*'name'"),
])
def test_a_text_column_the_export_lacks_is_an_error_before_anything_is_written(tmp_path, text, missing):
    export = _export(tmp_path / "export", [b"a"])
    export.write_bytes(export.read_bytes().replace(b",title\n", b",Title\n", 1))
    with pytest.raises(CatalogError, match=f"lacks columns {missing}"):
        ingest_catalog(str(export), _with_text(text), str(tmp_path / "lake"))
    assert not (tmp_path / "lake").exists()


def test_a_template_of_several_columns_makes_the_text(tmp_path):
    export = _export(tmp_path / "export", [b"Blue tee", b""])
    df = pd.read_csv(export, dtype=str, keep_default_na=False)
    df["brand"] = ["Koto", ""]
    df.to_csv(export, index=False)
    ingest_catalog(str(export), _with_text(["{brand} {title}", "article_type"]), str(tmp_path / "lake"))
    assert _texts(tmp_path / "lake") == {"P0": "Koto Blue tee tshirt", "P1": "tshirt"}


def test_long_texts_are_cut_and_counted(tmp_path):
    long = b" ".join([b"word"] * 600)
    result = ingest_catalog(str(_export(tmp_path / "export", [long, b"short", long])), TITLED,
                            str(tmp_path / "lake"))
    texts = _texts(tmp_path / "lake")
    assert result.texts_truncated == 2 and texts["P1"] == "short"
    assert texts["P0"] == texts["P2"] == " ".join(["word"] * 400)


def test_a_changed_title_changes_exactly_that_product(tmp_path):
    export = _export(tmp_path / "export", [b"Blue tee", b"Red dress", b"Green bag"])
    lake = tmp_path / "lake"
    ingest_catalog(str(export), TITLED, str(lake), run_id="night1")
    before = {p["product_id"]: p for p in read_products(open_storage(lake)).to_pylist()}
    export.write_bytes(export.read_bytes().replace(b"Red dress", b"Red  dress\t"))  # cleans the same
    again = ingest_catalog(str(export), TITLED, str(lake), run_id="night2")
    # unchanged; the table is written again for the row's new digest of its export cells
    assert (again.changed, again.unchanged, again.products_written) == (0, 3, True)
    cells = {p["product_id"]: p for p in read_products(open_storage(lake)).to_pylist()}
    assert cells["P1"]["row_digest"] != before["P1"]["row_digest"]
    assert ({**cells["P1"], "row_digest": None} == {**before["P1"], "row_digest": None})
    export.write_bytes(export.read_bytes().replace(b"Red  dress", b"Red midi dress"))
    result = ingest_catalog(str(export), TITLED, str(lake), run_id="night3")
    assert (result.new, result.changed, result.unchanged) == (0, 1, 2)
    after = {p["product_id"]: p for p in read_products(open_storage(lake)).to_pylist()}
    assert after["P1"]["text"] == "Red midi dress" and after["P1"]["ingest_run_id"] == "night3"
    assert after["P1"]["updated_at"] > before["P1"]["updated_at"]
    assert after["P1"]["first_seen"] == before["P1"]["first_seen"]
    assert after["P0"] == before["P0"] and after["P2"] == before["P2"]
    # a taxonomy without text: every text goes, and every product changed
    dropped = ingest_catalog(str(export), DEMO_NO_TEXT, str(lake), run_id="night4")
    assert dropped.changed == 3 and set(_texts(lake).values()) == {None}


def test_a_products_table_without_the_text_column_reads_as_null_and_changes_nothing(tmp_path):
    """A table written before the text column: readers see null text, and a re-ingest with a
    taxonomy without text finds no product changed and does not rewrite it."""
    export = _export(tmp_path / "export", [b"Blue tee", b"Red dress"])
    lake = tmp_path / "lake"
    ingest_catalog(str(export), DEMO_NO_TEXT, str(lake), run_id="old")
    path = lake / PRODUCTS_PATH
    old = pq.read_table(path)
    pq.write_table(old.drop_columns(["text"]), path)  # as the versions before it wrote it
    before = path.read_bytes()

    products = read_products(open_storage(lake))
    assert products["text"].to_pylist() == [None, None] and products["text"].type == pa.string()
    assert PreviousProducts(path).same_as(_rewritten(old, tmp_path / "new.parquet"))
    assert [t.column_names for t in PreviousProducts(path).batches(["product_id", "text"])] == [["product_id", "text"]]

    again = ingest_catalog(str(export), DEMO_NO_TEXT, str(lake), run_id="new")
    assert (again.changed, again.unchanged, again.products_written) == (0, 2, False)
    assert path.read_bytes() == before
    # with text mapped, the products that have some change
    titled = ingest_catalog(str(export), TITLED, str(lake), run_id="titled")
    assert (titled.changed, titled.unchanged) == (2, 0)
    assert _texts(lake) == {"P0": "Blue tee", "P1": "Red dress"}


def _rewritten(table, path: Path) -> Path:
    pq.write_table(table, path)
    return path
