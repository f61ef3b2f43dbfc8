"""A re-ingest takes the rows whose export cells and image versions did not change as they
were, unvalidated (tagger.ingest.unchanged), and comes to exactly the tables of validating
every row: duplicates across chunks, changed photos under the same name, changed cells, a
new taxonomy, links, left-out images and tables from before the row digest."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from catalog_schemas.tables import PRODUCTS
from catalog_schemas.taxonomy import load_taxonomy
from tagger.config import IngestConfig
from tagger.ingest import rows as ingest_rows
from tagger.ingest import run as ingest_run
from tagger.ingest.run import ingest_catalog
from tagger.ingest.unchanged import row_digests
from tagger.io.storage import open_storage
from tagger.lake import PRODUCTS_PATH, read_products
from tests.conftest import DEMO_TAXONOMY
from tests.ingest.test_chunks import _counts, _export, _read, _tables, _write
from tests.ingest.test_multi_image import _catalog, _images, _taxonomy


class _Validated:
    """Counts the rows validated (their labels parsed)."""

    def __init__(self, monkeypatch):
        self.rows = 0
        parse = ingest_rows.parse_labels

        def counted(*a, **kw):
            self.rows += 1
            return parse(*a, **kw)

        monkeypatch.setattr(ingest_rows, "parse_labels", counted)


def _validate_every_row(monkeypatch):
    monkeypatch.setattr(ingest_run, "unchanged_rows",
                        lambda ids, *a: (np.zeros(len(ids), bool), PRODUCTS.empty_table()))


def _ingest(export, lake, run_id, taxonomy=DEMO_TAXONOMY, **config):
    config = IngestConfig(**({"chunk_size": 7, "shard_size": 5, "max_reject_fraction": 0.5} | config))
    return ingest_catalog(str(export), taxonomy, str(lake), config, run_id=run_id)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_reingest_takes_unchanged_rows_and_gives_the_tables_of_validating_all(tmp_path, fmt, monkeypatch):
    export = _export(tmp_path, fmt)  # duplicates of earlier rows in a later chunk, a shared image
    first = _ingest(export, tmp_path / "a", "night1")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    rows = first.rows

    # the next export: one photo rewritten under its name, one label changed, one row cosmetically
    df = _read(export)
    photo = export.parent / df[df.id == "P00003"].iloc[0]["image"]
    photo.write_bytes(photo.read_bytes() + b"v2")
    df.loc[df.id == "P00004", "colour"] = "green" if df[df.id == "P00004"].iloc[0]["colour"] != "green" else "red"
    df.loc[df.id == "P00006", "title"] = "  " + str(df[df.id == "P00006"].iloc[0]["title"]) + " "
    _write(df, export)

    validated = _Validated(monkeypatch)
    fast = _ingest(export, tmp_path / "a", "night2")
    taken = rows - validated.rows
    with monkeypatch.context() as m:
        _validate_every_row(m)
        full = _ingest(export, tmp_path / "b", "night2")
    assert _counts(fast) == _counts(full)
    assert _tables(tmp_path / "a") == _tables(tmp_path / "b")
    assert fast.changed == 2  # the label and the photo
    # validated: the three changed rows, and the rejected ones (duplicates, bad rows) as every night
    assert first.rejected >= 4 and taken == rows - 3 - first.rejected, (rows, validated.rows)

    # a third night with nothing changed: every row but the rejected ones taken, nothing written
    validated.rows = 0
    again = _ingest(export, tmp_path / "a", "night3")
    assert (validated.rows, again.changed, again.products_written) == (first.rejected, 0, False)


def test_a_new_taxonomy_validates_every_row_again(tmp_path, monkeypatch):
    export = _export(tmp_path, "csv")
    first = _ingest(export, tmp_path / "lake", "night1")
    data = load_taxonomy(DEMO_TAXONOMY).to_dict()
    data["attributes"][0]["description"] = "edited"  # any change to the taxonomy counts
    validated = _Validated(monkeypatch)
    _ingest(export, tmp_path / "lake", "night2", taxonomy=load_taxonomy(data))
    assert validated.rows == first.rows


def test_a_linked_image_is_resolved_every_run_and_a_repointed_link_is_seen(tmp_path, monkeypatch):
    _images(tmp_path / "store", "one.jpg", "two.jpg")
    _images(tmp_path / "export", "a.jpg")
    (tmp_path / "export" / "images" / "b.jpg").symlink_to(tmp_path / "store" / "images" / "one.jpg")
    export = _catalog(tmp_path / "export", [{"id": "A", "image": "images/a.jpg"},
                                            {"id": "B", "image": "images/b.jpg"}])
    roots, taxonomy = [str(tmp_path)], _taxonomy("image")
    _ingest(export, tmp_path / "lake", "night1", taxonomy, image_roots=roots)
    digests = dict(zip(*read_products(open_storage(tmp_path / "lake")).select(["product_id", "row_digest"])
                       .to_pydict().values()))
    assert digests["A"] is not None and digests["B"] is None
    validated = _Validated(monkeypatch)
    _ingest(export, tmp_path / "lake", "night2", taxonomy, image_roots=roots)
    assert validated.rows == 1  # B
    link = tmp_path / "export" / "images" / "b.jpg"
    link.unlink()
    link.symlink_to(tmp_path / "store" / "images" / "two.jpg")
    result = _ingest(export, tmp_path / "lake", "night3", taxonomy, image_roots=roots)
    assert (result.changed, result.images_fetched) == (1, 1)


def test_a_product_with_a_left_out_image_is_validated_and_its_reject_written_every_run(tmp_path, monkeypatch):
    _images(tmp_path, "a1.jpg", "a2.bad.jpg", "b1.jpg")
    export = _catalog(tmp_path, [{"id": "A", "photos": "images/a1.jpg|images/a2.bad.jpg"},
                                 {"id": "B", "photos": "images/b1.jpg"}])
    taxonomy = _taxonomy("photos", separator="|")
    for night in ("night1", "night2"):
        validated = _Validated(monkeypatch)
        result = _ingest(export, tmp_path / "lake", night, taxonomy=taxonomy)
        assert result.images_rejected == 1 and result.products == 2
    assert validated.rows == 1  # A again; B taken


def test_a_table_from_before_the_row_digest_validates_every_row_once(tmp_path, monkeypatch):
    export = _export(tmp_path, "csv")
    first = _ingest(export, tmp_path / "lake", "night1")
    path = tmp_path / "lake" / PRODUCTS_PATH
    pq.write_table(pq.read_table(path).drop_columns(["row_digest"]), path)  # as older versions wrote it
    validated = _Validated(monkeypatch)
    second = _ingest(export, tmp_path / "lake", "night2")
    assert (validated.rows, second.changed, second.products_written) == (first.rows, 0, True)
    validated.rows = 0
    _ingest(export, tmp_path / "lake", "night3")
    assert validated.rows == first.rejected  # the rejected rows only, as every night


def test_row_digests_cover_every_mapped_cell_and_any_cell_type():
    df = pd.DataFrame({"id": ["A", "B", "C"], "photos": [["x.jpg", "y.jpg"], ["x.jpg"], None],
                       "title": ["caf\udce9", "plain", 3.5]}, dtype=object)
    base = row_digests(df, ["id", "photos", "title"], "k" * 16)
    assert base.dtype == np.int64 and len(set(base)) == 3
    assert np.array_equal(base, row_digests(df.copy(), ["id", "photos", "title"], "k" * 16))
    assert not np.array_equal(base, row_digests(df, ["id", "photos", "title"], "j" * 16))
    for column, value in [("photos", ["y.jpg", "x.jpg"]), ("title", "plain "), ("id", "A2")]:
        changed = df.copy()
        changed.at[0, column] = value
        after = row_digests(changed, ["id", "photos", "title"], "k" * 16)
        assert after[0] != base[0] and np.array_equal(after[1:], base[1:]), column
    # a column the mapping does not read is not in the digest
    assert np.array_equal(base, row_digests(df.assign(price=[1, 2, 3]), ["id", "photos", "title"], "k" * 16))
