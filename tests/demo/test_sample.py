"""Tests of the synthetic demo catalog (tagger.sample)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tagger.demo import sample
from tagger.demo.sample import BRANDS, COLUMNS, TITLE_WORDS, Product, generate_catalog, render_product
from tests.conftest import ROOT

TAXONOMY = ROOT / "catalog_schemas" / "taxonomies" / "demo.yaml"
BAD_IDS = ["BAD-MISSING", "BAD-HTML", "BAD-LABEL"]
N = 120


def _read_csv(path: Path) -> pd.DataFrame:
    # Keep empty cells as "" and '-' as text: both mean something in the features column.
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_catalog(tmp_path_factory.mktemp("cat"), N, seed=7, image_size=96)


@pytest.fixture(scope="module")
def taxonomy() -> dict[str, dict]:
    doc = yaml.safe_load(TAXONOMY.read_text())
    return {a["name"]: a for a in doc["attributes"]}


def _foreground(img: Image.Image, threshold: float = 60) -> np.ndarray:
    """Pixels far from the background colour, estimated from the image border."""
    a = np.asarray(img.convert("RGB"), float)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return np.abs(a - np.median(border, axis=0)).sum(-1) > threshold


def _crop_mask(mask: np.ndarray, size: int = 32) -> np.ndarray:
    """Mask cropped to its bounding box, centred in a square and resized: removes position
    and scale but keeps the aspect ratio (a bag is wide, trousers are tall)."""
    ys, xs = np.nonzero(mask)
    h, w = ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()
    n = max(h, w)
    square = np.zeros((n, n), np.uint8)
    square[(n - h) // 2: (n - h) // 2 + h, (n - w) // 2: (n - w) // 2 + w] = mask[ys.min():, xs.min():][:h, :w] * 255
    return np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR)) > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_rows_and_columns(catalog: Path) -> None:
    df = _read_csv(catalog)
    assert list(df.columns) == COLUMNS
    assert len(df) == N + 3
    assert df["id"].iloc[0] == "P00001" and df["id"].is_unique
    assert list(df["id"].iloc[-3:]) == BAD_IDS
    assert (df["image"] == "images/" + df["id"] + ".jpg").all()
    assert (df["article_type"] != "").all()
    good = df.iloc[:N]
    for col in ["colour", "pattern", "features"]:  # some labels unknown, most known
        assert 0 < (good[col] == "").mean() < 0.5, col
    assert (good["features"] == "-").any() and good["features"].str.contains("|", regex=False).any()


def test_no_bad_rows(tmp_path: Path) -> None:
    df = _read_csv(generate_catalog(tmp_path, 10, seed=1, bad_rows=False, image_size=64))
    assert len(df) == 10 and not df["id"].str.startswith("BAD").any()
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 10


def test_deterministic(tmp_path: Path) -> None:
    a = generate_catalog(tmp_path / "a", 15, seed=3, image_size=64)
    b = generate_catalog(tmp_path / "b", 15, seed=3, image_size=64)
    c = generate_catalog(tmp_path / "c", 15, seed=4, image_size=64)
    assert a.read_bytes() == b.read_bytes()
    assert _digest(a.parent) == _digest(b.parent)
    assert a.read_bytes() != c.read_bytes()
    assert _digest(a.parent / "images") != _digest(c.parent / "images")


def test_sleeve_length_only_for_tops_and_dresses(catalog: Path, taxonomy: dict) -> None:
    df = _read_csv(catalog)
    sleeved = df["category"].isin(taxonomy["sleeve_length"]["categories"])
    assert (df.loc[~sleeved, "sleeve_length"] == "").all()
    assert (df.loc[sleeved, "sleeve_length"] != "").mean() > 0.6


def test_labels_in_taxonomy(catalog: Path, taxonomy: dict) -> None:
    df = _read_csv(catalog)
    df = df[df["id"] != "BAD-LABEL"]
    for name, attr in taxonomy.items():
        values = df[name][df[name] != ""]
        if attr["kind"] == "multi":
            values = values[values != "-"].str.split("|").explode()
        assert set(values) <= set(attr["values"]), name
    assert set(df["category"]) == {"tops", "dresses", "bottoms", "bags"}
    assert set(df["article_type"]) == set(taxonomy["article_type"]["values"])


def test_bad_rows(catalog: Path, taxonomy: dict) -> None:
    df = _read_csv(catalog).set_index("id")
    root = catalog.parent
    assert not (root / df.loc["BAD-MISSING", "image"]).exists()
    html = (root / df.loc["BAD-HTML", "image"]).read_bytes()
    assert html.lstrip().lower().startswith(b"<!doctype html")
    with pytest.raises(Exception):
        Image.open(root / df.loc["BAD-HTML", "image"]).load()
    assert df.loc["BAD-LABEL", "colour"] == "purple"
    assert "purple" not in taxonomy["colour"]["values"]
    with Image.open(root / df.loc["BAD-LABEL", "image"]) as im:
        im.load()
        assert im.size == (96, 96)
    for pid in df.index[:N]:  # every good row has a readable image
        assert (root / df.loc[pid, "image"]).exists()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_formats(tmp_path: Path, fmt: str) -> None:
    path = generate_catalog(tmp_path, 40, seed=2, image_size=64, fmt=fmt)
    assert path == tmp_path / f"catalog.{fmt}"
    df = {"csv": _read_csv, "jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
          "parquet": pd.read_parquet}[fmt](path)
    assert list(df.columns) == COLUMNS
    assert list(df["id"]) == [f"P{i:05d}" for i in range(1, 41)] + BAD_IDS
    if fmt != "csv":  # features: a list ([] = known none) or null (unknown)
        feats = df["features"]
        assert feats.isna().any()
        known = [list(f) for f in feats if f is not None and not (isinstance(f, float) and np.isnan(f))]
        assert [] in known and all(set(f) <= {"logo", "pocket", "zip"} for f in known)


def test_formats_agree(tmp_path: Path) -> None:
    csv = _read_csv(generate_catalog(tmp_path / "c", 20, seed=5, image_size=64))
    pq = pd.read_parquet(generate_catalog(tmp_path / "p", 20, seed=5, image_size=64, fmt="parquet"))
    as_text = pq["features"].map(lambda f: "" if f is None else ("|".join(f) or "-"))
    assert list(as_text) == list(csv["features"])
    assert list(pq["colour"].fillna("")) == list(csv["colour"])


def test_red_solid_garment_is_red(catalog: Path) -> None:
    df = _read_csv(catalog)
    reds = df[(df["colour"] == "red") & (df["pattern"] == "solid")]
    assert len(reds) >= 1
    for path in reds["image"]:
        img = Image.open(catalog.parent / path).convert("RGB")
        r, g, b = np.asarray(img, float)[_foreground(img)].mean(0)
        assert r > 150 and r > g + 80 and r > b + 80, (path, r, g, b)


def test_colours_distinct() -> None:
    means = {}
    for colour in ["red", "green", "blue", "yellow", "black", "white"]:
        img = render_product(Product("bag", colour, "solid", None), np.random.default_rng(0), 96)
        means[colour] = np.asarray(img, float)[_foreground(img, 40)].mean(0)
    assert np.argmax(means["red"]) == 0 and np.argmax(means["green"]) == 1 and np.argmax(means["blue"]) == 2
    assert means["yellow"][:2].min() > means["yellow"][2] + 100
    assert means["black"].max() < 70 and means["white"].min() > 220


def test_silhouettes_differ() -> None:
    masks = {
        t: [_crop_mask(_foreground(render_product(Product(t, "blue", "solid", None), np.random.default_rng(s), 96)))
            for s in range(4)]
        for t in ["trousers", "bag"]
    }
    cross = np.mean([_iou(a, b) for a in masks["trousers"] for b in masks["bag"]])
    same = np.mean([_iou(a, b) for t in masks for i, a in enumerate(masks[t]) for b in masks[t][i + 1:]])
    assert cross < 0.55 and same > cross + 0.25, (cross, same)
    # Drawn at the same place and scale (same seed), the two masks overlap only partly.
    placed = [_foreground(render_product(Product(t, "blue", "solid", None), np.random.default_rng(0), 96))
              for t in ["trousers", "bag"]]
    assert _iou(*placed) < 0.6


def test_sleeves_and_patterns_visible() -> None:
    def fg(p: Product, seed: int = 0) -> np.ndarray:
        return _foreground(render_product(p, np.random.default_rng(seed), 96))

    # Same seed -> same placement: long sleeves cover more than none.
    tank, long_ = fg(Product("tshirt", "red", "solid", "sleeveless")), fg(Product("tshirt", "red", "solid", "long"))
    assert long_.sum() > 1.3 * tank.sum()
    # Stripes make rows inside the garment alternate in brightness; solid does not.
    def row_contrast(pattern: str) -> float:
        img = render_product(Product("bag", "blue", pattern, None), np.random.default_rng(1), 96)
        a, m = np.asarray(img, float).mean(-1), _foreground(img, 40)
        return float(np.abs(np.diff(a, axis=0))[m[1:] & m[:-1]].mean())

    assert row_contrast("striped") > 2 * row_contrast("solid")


def test_features_change_only_a_small_region() -> None:
    plain = np.asarray(render_product(Product("tshirt", "green", "solid", "short"), np.random.default_rng(9), 96), int)
    for feature in ["logo", "pocket", "zip"]:
        img = render_product(Product("tshirt", "green", "solid", "short", (feature,)), np.random.default_rng(9), 96)
        changed = (np.abs(np.asarray(img, int) - plain).sum(-1) > 60).mean()
        assert 0.003 < changed < 0.1, (feature, changed)


OLD_COLUMNS = ["id", "category", "image", "article_type", "colour", "pattern", "sleeve_length", "features"]


def _columns_digest(path: Path) -> str:
    return hashlib.sha256(_read_csv(path)[OLD_COLUMNS].to_csv(index=False).encode()).hexdigest()


def test_titles_leave_the_images_and_labels_of_a_seed_as_they_were(tmp_path: Path, monkeypatch) -> None:
    with_titles = generate_catalog(tmp_path / "a", 40, seed=11, image_size=32)
    # the labels this seed drew before catalogs had titles (images and labels share a generator)
    assert _columns_digest(with_titles) == "edebe4dc5029f2bd8e465225dc82cc10b5f17d0b0cb84ac5cab32c9f26f3204d"
    monkeypatch.setattr(sample, "_title", lambda p, rng: "")
    without = generate_catalog(tmp_path / "b", 40, seed=11, image_size=32)
    assert _columns_digest(without) == _columns_digest(with_titles)
    assert _digest(with_titles.parent / "images") == _digest(without.parent / "images")
    assert set(_read_csv(without)["title"]) == {""} and _read_csv(with_titles)["title"].str.len().mean() > 20


def test_titles_are_deterministic_for_a_seed(tmp_path: Path) -> None:
    titles = [list(_read_csv(generate_catalog(tmp_path / str(s), 12, seed=s, image_size=16))["title"])
              for s in (3, 3, 4)]
    assert titles[0] == titles[1] != titles[2]


def _says(title: str, words: list[str]) -> bool:
    return any(w and f" {w} " in f" {title} " for w in words)


def test_titles_describe_the_product_with_a_shops_noise() -> None:
    """Brand first, the article named; about 5% empty, 5% a wrong colour, 15% a word left out."""
    rng, title_rng = np.random.default_rng(0), np.random.default_rng(1)
    products = [sample._sample_product(rng) for _ in range(4000)]
    titles = [sample._title(p, title_rng) for p in products]
    assert 0.03 < np.mean([t == "" for t in titles]) < 0.07
    said = [(p, t) for p, t in zip(products, titles) if t]
    assert all(any(t.startswith(b + " ") for b in BRANDS) for _, t in said)
    assert all(_says(t, TITLE_WORDS["article_type"][p.article_type]) for p, t in said)
    colours = TITLE_WORDS["colour"]
    wrong = np.mean([_says(t, sum((w for c, w in colours.items() if c != p.colour), [])) for p, t in said])
    assert 0.03 < wrong < 0.08

    def complete(p: Product, t: str) -> bool:
        values = [("colour", p.colour), ("pattern", p.pattern), ("sleeve_length", p.sleeve_length),
                  *(("features", f) for f in p.features)]
        return all(_says(t, TITLE_WORDS[a][v]) for a, v in values if v and TITLE_WORDS[a][v][0])

    left_out = np.mean([not complete(p, t) for p, t in said])
    assert 0.13 < left_out < 0.25  # a word left out (not always one that names a value) or a wrong colour
    synonyms = np.mean([not _says(t, [TITLE_WORDS["colour"][p.colour][0]]) for p, t in said])
    assert 0.25 < synonyms < 0.5
