"""An export ingested in chunks gives exactly the tables and shards of one chunk, in every
format, on a first ingest and a re-ingest, with duplicates and shared images across chunk
boundaries; the reject guard still refuses; no chunk holds more rows than chunk_size."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_schemas.tables import PRODUCTS, REJECTS
from tagger.config import IngestConfig
from tagger.demo.sample import generate_catalog
from tagger.ingest import rows as ingest_rows
from tagger.ingest import run as ingest_run
from tagger.ingest.export import CatalogError
from tagger.ingest.run import ingest_catalog
from tagger.io.storage import open_storage, read_table
from tagger.lake import IMAGES_PREFIX, PRODUCTS_PATH, REJECTS_PATH
from tests.conftest import DEMO_TAXONOMY

CLOCKS = ["first_seen", "updated_at"]  # the run's own time: differs between two runs


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    if path.suffix == ".jsonl":
        return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()], dtype=object)
    return pd.DataFrame(pq.read_table(path).to_pylist(), dtype=object)


def _write(df: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    else:
        pq.write_table(pa.Table.from_pylist(df.to_dict("records"), schema=pq.read_schema(path)), path)


def _export(tmp_path: Path, fmt: str) -> Path:
    """A generated export, shuffled (ids out of order), with an exact and a conflicting
    duplicate far from their first rows, and two products sharing one image."""
    path = generate_catalog(tmp_path / "export", n_products=24, seed=5, image_size=40, fmt=fmt)
    df = _read(path).sample(frac=1.0, random_state=0).reset_index(drop=True)
    same = df[df.id == "P00002"].iloc[0].to_dict()
    other = df[df.id == "P00005"].iloc[0].to_dict()
    other["colour"] = "red" if other["colour"] != "red" else "blue"
    df = pd.concat([df, pd.DataFrame([same, other], dtype=object)], ignore_index=True)
    df.loc[df.id == "P00007", "image"] = df[df.id == "P00001"].iloc[0]["image"]
    _write(df, path)
    return path


def _tables(lake: Path) -> dict:
    storage = open_storage(lake)
    shards = {p: (lake / p).read_bytes() for p in sorted(storage.list(IMAGES_PREFIX)) if p.endswith(".parquet")}
    return dict(products=read_table(storage, PRODUCTS_PATH, PRODUCTS).drop_columns(CLOCKS),
                rejects=read_table(storage, REJECTS_PATH, REJECTS).drop_columns(["rejected_at"]),
                shards=shards)


def _counts(result) -> dict:
    out = result.to_dict()
    for key in ("seconds", "lake", "rejects_history"):
        out.pop(key)
    return out


def _ingest(export: Path, lake: Path, chunk_size: int, run_id: str, **config):
    config = IngestConfig(chunk_size=chunk_size, shard_size=5, max_reject_fraction=0.5, **config)
    return ingest_catalog(str(export), DEMO_TAXONOMY, str(lake), config, run_id=run_id)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_chunks_give_the_tables_of_one_chunk(fmt, tmp_path, monkeypatch):
    export = _export(tmp_path, fmt)
    seen = []  # rows of every chunk the validator got
    validate = ingest_rows.RowValidator.validate
    monkeypatch.setattr(ingest_rows.RowValidator, "validate", lambda self, df, **kw: seen.append(len(df)) or validate(self, df, **kw))
    lakes = {size: tmp_path / f"lake-{size}" for size in (10_000, 4, 1)}
    first = {size: _counts(_ingest(export, lake, size, "night1")) for size, lake in lakes.items()}
    assert seen == [29] + [4] * 7 + [1] + [1] * 29  # 24 good + 3 bad + 2 duplicate rows
    assert first[4] == first[1] == first[10_000]
    # the two duplicates, BAD-LABEL, BAD-MISSING and BAD-HTML
    assert first[1]["rejected"] == 5 and first[1]["products"] == 24
    want = _tables(lakes[10_000])
    assert want["rejects"]["reason"].to_pylist().count("duplicate_id") == 1
    for size in (4, 1):
        got = _tables(lakes[size])
        assert got["products"].equals(want["products"]) and got["rejects"].equals(want["rejects"])
        assert got["shards"] == want["shards"]  # same names, same bytes
    assert len(want["shards"]) == 5  # 23 distinct images (P00007 shows P00001's) in shards of 5

    # A re-ingest: a product gone, two images redrawn; the previous table is streamed, never
    # read whole (read_table is only the damaged table's error path).
    df = _read(export)
    _write(df[df.id != "P00011"], export)
    for pid, colour in (("P00012", "green"), ("P00013", "navy")):
        Image.new("RGB", (40, 40), colour).save(export.parent / "images" / f"{pid}.jpg")
    monkeypatch.setattr(ingest_run, "read_table", lambda *a, **k: pytest.fail("read the whole products table"))
    again = {size: _counts(_ingest(export, lake, size, "night2")) for size, lake in lakes.items()}
    assert again[4] == again[1] == again[10_000]
    assert (again[1]["changed"], again[1]["removed"], again[1]["images_stored"]) == (2, 1, 2)
    want = _tables(lakes[10_000])
    for size in (4, 1):
        got = _tables(lakes[size])
        assert got["products"].equals(want["products"]) and got["shards"] == want["shards"]


def test_the_reject_guard_holds_for_a_chunked_export(tmp_path):
    export = _export(tmp_path, "csv")
    lake = tmp_path / "lake"
    _ingest(export, lake, 4, "night1")
    before = {p: p.read_bytes() for p in sorted((lake / "catalog").rglob("*.parquet"))
              if "rejects" not in str(p)}
    df = _read(export)
    df.loc[df.index[6:], "image"] = "images/nope.jpg"  # most rows now miss their image...
    good = df[df.id.str.startswith("P")].iloc[0]
    Image.new("RGB", (40, 40), "blue").save(export.parent / good["image"])  # ... one is new
    _write(df, export)
    with pytest.raises(CatalogError, match="max_reject_fraction"):
        _ingest(export, lake, 4, "night2")
    after = {p: p.read_bytes() for p in sorted((lake / "catalog").rglob("*.parquet"))
             if "rejects" not in str(p)}
    assert after == before  # no new shard left behind, the products table as it was


def test_a_parse_error_in_a_later_chunk_commits_nothing(tmp_path):
    export = _export(tmp_path, "jsonl")
    lake = tmp_path / "lake"
    with export.open("a") as f:
        f.write("{not json\n")
    with pytest.raises(CatalogError, match="cannot be parsed"):
        _ingest(export, lake, 4, "night1")
    assert not (lake / "catalog" / "products").exists()
    assert not [p for p in (lake / "catalog").rglob("*.parquet") if IMAGES_PREFIX in str(p)]
