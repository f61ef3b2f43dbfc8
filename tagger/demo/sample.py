"""Synthetic demo catalog: drawn products whose labels can be seen in the image.

Each product is a flat silhouette (t-shirt, dress, trousers, skirt, bag) filled with a
colour and a pattern, with optional sleeves and features (logo, pocket, zip), placed at a
random position, scale and small rotation on a neutral background with mild noise. The
labels match ``catalog_schemas/taxonomies/demo.yaml``, and a small CNN trained from scratch
on 64-96 px versions learns them in minutes on a CPU.

Each product also has a shop-like ``title`` ("Koto navy striped long-sleeve tee with logo")
made from its true attributes with a shop's noise: synonyms, a word left out, now and then
a wrong colour or no title at all (TITLE_NOISE).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

Pt = tuple[float, float]
Polygon = list[Pt]

COLUMNS = ["id", "category", "image", "article_type", "colour", "pattern", "sleeve_length", "features",
           "title"]
# Taxonomy values (demo.yaml); the tests check these lists against the YAML.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35), "green": (40, 150, 60), "blue": (40, 75, 205),
    "yellow": (240, 210, 40), "black": (30, 30, 30), "white": (245, 245, 245),
}
# Not in the taxonomy: only the BAD-LABEL row uses it, so that its image still matches it.
_OFF_TAXONOMY_RGB = {"purple": (130, 40, 150)}
PATTERNS = ["solid", "striped", "dotted", "checked"]
SLEEVES = ["short", "long", "sleeveless"]
FEATURES = ["logo", "pocket", "zip"]
# Share of rows whose label is left unknown (empty cell / null), per attribute.
UNKNOWN_RATE = {"colour": 0.10, "pattern": 0.20, "sleeve_length": 0.15, "features": 0.25}
# Magenta: a hue none of the garment colours has, so the logo stands out on every one.
LOGO_RGB = (235, 40, 210)
FEATURE_RATE = 0.35  # each feature independently, so every subset (incl. none) occurs

# Title words per attribute value: the first is the plain word, the others synonyms a shop
# uses instead ("" : no word, as shops rarely write "solid").
TITLE_WORDS: dict[str, dict[str, list[str]]] = {
    "colour": {"red": ["red", "crimson", "scarlet"], "green": ["green", "olive", "forest green"],
               "blue": ["blue", "navy", "cobalt"], "yellow": ["yellow", "mustard", "lemon"],
               "black": ["black", "jet black", "charcoal"], "white": ["white", "ivory", "off-white"],
               "purple": ["purple", "violet"]},
    "pattern": {"solid": ["", "plain", "solid"], "striped": ["striped", "stripe", "pinstripe"],
                "dotted": ["dotted", "polka dot", "spotted"], "checked": ["checked", "plaid", "gingham"]},
    "sleeve_length": {"short": ["short-sleeve", "short sleeved"], "long": ["long-sleeve", "long sleeved"],
                      "sleeveless": ["sleeveless"]},
    "article_type": {"tshirt": ["t-shirt", "tee", "top"], "dress": ["dress", "frock"],
                     "trousers": ["trousers", "pants", "chinos"], "skirt": ["skirt"],
                     "bag": ["bag", "tote", "handbag"]},
    "features": {"logo": ["logo", "logo print"], "pocket": ["pocket", "patch pocket"],
                 "zip": ["zip", "zipper"]},
}
BRANDS = ["Koto", "Nordwind", "Bellamy", "Urban Fox", "Maison Lumi", "Alder & Co", "Brisk", "Seaside"]
SYNONYM_RATE = 0.4  # a word other than the plain one
# Titles as shops write them: one attribute word left out, a wrong colour, no title at all.
TITLE_NOISE = {"missing_word": 0.15, "wrong_colour": 0.05, "empty": 0.05}


@dataclass(frozen=True)
class Product:
    """The true attributes of one drawn product (the catalog may hide some of them)."""

    article_type: str
    colour: str
    pattern: str
    sleeve_length: str | None
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shape:
    """A silhouette in unit coordinates (centre 0,0, extent about +-0.5) and where features go."""

    polygons: list[Polygon]
    logo: Pt
    pocket: tuple[float, float, float, float]  # u0, v0, u1, v1
    zip: tuple[Pt, Pt]


def _mirror(poly: Polygon) -> Polygon:
    return [(-u, v) for u, v in poly]


def _sleeve(shoulder: Pt, armpit: Pt, kind: str | None) -> Polygon | None:
    """Right sleeve as a quad going out and down from the armhole; None if sleeveless."""
    if kind == "short":
        d, length = (0.80, 0.60), 0.17
    elif kind == "long":
        d, length = (0.42, 0.91), 0.50  # hangs down beside the body, leaving a visible gap
    else:
        return None
    (sx, sy), (ax, ay) = shoulder, armpit
    taper = 0.25 if kind == "long" else 0.0  # narrower wrist than armhole
    return [(sx, sy), (sx + length * d[0], sy + length * d[1]),
            (ax + length * d[0] + taper * (sx - ax), ay + length * d[1] + taper * (sy - ay)), (ax, ay)]


def _upper_garment(neck: Pt, dip: float, shoulder: Pt, armpit: Pt, lower: list[Pt],
                   sleeve: str | None) -> list[Polygon]:
    """Symmetric body (right half mirrored) with sleeves, or narrow straps when sleeveless."""
    nx, ny = neck
    if sleeve == "sleeveless":
        # Straps and a concave armhole, so "sleeveless" differs from "short" in outline too.
        top = [(nx + 0.06, ny), (armpit[0] - 0.05, (ny + armpit[1]) / 2 + 0.03)]
    else:
        top = [shoulder]
    right = [neck, *top, armpit, *lower]
    polys = [[(0.0, ny + dip), *right, *_mirror(right[::-1])]]
    sl = _sleeve(shoulder, armpit, sleeve)
    if sl is not None:
        polys += [sl, _mirror(sl)]
    return polys


def _tshirt(sleeve: str | None) -> Shape:
    polys = _upper_garment((0.10, -0.40), 0.07, (0.27, -0.36), (0.25, -0.15), [(0.25, 0.42)], sleeve)
    return Shape(polys, logo=(-0.12, -0.22), pocket=(0.06, 0.10, 0.20, 0.26), zip=((0, -0.33), (0, 0.40)))


def _dress(sleeve: str | None) -> Shape:
    lower = [(0.12, -0.06), (0.38, 0.47)]  # narrow waist, then A-line flare
    polys = _upper_garment((0.08, -0.46), 0.08, (0.17, -0.44), (0.16, -0.25), lower, sleeve)
    return Shape(polys, logo=(-0.06, -0.30), pocket=(0.08, 0.12, 0.24, 0.28), zip=((0, -0.38), (0, 0.45)))


def _trousers(sleeve: str | None) -> Shape:
    poly = [(-0.21, -0.46), (0.21, -0.46), (0.25, 0.47), (0.07, 0.47), (0.0, -0.12), (-0.07, 0.47), (-0.25, 0.47)]
    return Shape([poly], logo=(-0.14, 0.02), pocket=(0.07, -0.40, 0.19, -0.26), zip=((0, -0.44), (0, -0.16)))


def _skirt(sleeve: str | None) -> Shape:
    poly = [(-0.19, -0.30), (0.19, -0.30), (0.37, 0.32), (-0.37, 0.32)]
    return Shape([poly], logo=(-0.13, -0.12), pocket=(0.08, 0.0, 0.24, 0.16), zip=((0, -0.28), (0, 0.05)))


def _bag(sleeve: str | None) -> Shape:
    # Wider than tall, so its outline differs from the tall garments even without the handle.
    body = [(-0.42, -0.02), (0.42, -0.02), (0.42, 0.38), (-0.42, 0.38)]
    t = np.linspace(np.pi, 2 * np.pi, 13)  # upper half-ellipse: the handle
    outer = [(0.22 * np.cos(a), -0.02 + 0.32 * np.sin(a)) for a in t]
    inner = [(0.15 * np.cos(a), -0.02 + 0.25 * np.sin(a)) for a in t[::-1]]
    return Shape([body, outer + inner], logo=(-0.22, 0.12), pocket=(0.08, 0.14, 0.30, 0.32),
                 zip=((0, 0.0), (0, 0.36)))


@dataclass(frozen=True)
class Article:
    category: str
    draw: Callable[[str | None], Shape]


# Add an article type by adding an entry here (and to the taxonomy).
ARTICLES: dict[str, Article] = {
    "tshirt": Article("tops", _tshirt),
    "dress": Article("dresses", _dress),
    "trousers": Article("bottoms", _trousers),
    "skirt": Article("bottoms", _skirt),
    "bag": Article("bags", _bag),
}
SLEEVED_CATEGORIES = {"tops", "dresses"}


def _lum(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Where the pattern shade goes, in garment coordinates (so it turns with the garment)."""
    ph_u, ph_v = rng.uniform(0, 1, 2)
    if pattern == "striped":
        p = rng.uniform(0.11, 0.14)  # ~6 px period at 64 px: still resolvable
        return ((v / p + ph_v) % 1.0) < 0.45
    if pattern == "checked":
        c = rng.uniform(0.07, 0.09)
        return (np.floor(u / c + ph_u) + np.floor(v / c + ph_v)) % 2 == 0
    if pattern == "dotted":
        p = rng.uniform(0.11, 0.14)
        rv = v / p + ph_v
        row = np.round(rv)
        ru = u / p + ph_u + 0.5 * (row % 2)  # staggered rows
        return (ru - np.round(ru)) ** 2 + (rv - row) ** 2 < 0.28**2
    return np.zeros(u.shape, bool)


def render_product(product: Product, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw one product as an RGB image of ``size`` x ``size`` pixels."""
    shape = ARTICLES[product.article_type].draw(product.sleeve_length)
    base = COLOURS.get(product.colour) or _OFF_TAXONOMY_RGB[product.colour]
    # Jitter mostly the brightness: a large per-channel jitter would tint white into pink.
    fill = np.clip(np.array(base) + rng.integers(-12, 13) + rng.integers(-6, 7, 3), 0, 255).astype(float)
    # Pattern shade: the fill moved towards white (dark fills) or black (light fills); only
    # 45% of the way, so the garment's own hue still dominates its colour.
    target = 255.0 if _lum(fill) < 140 else 0.0
    shade = fill * 0.55 + target * 0.45
    ink = np.array((245.0,) * 3 if _lum(fill) < 140 else (25.0,) * 3)  # features: max contrast

    scale = size * rng.uniform(0.66, 0.86)
    cx, cy = size / 2 + rng.uniform(-0.5, 0.5, 2) * (size - scale) * 0.5
    theta = np.deg2rad(rng.uniform(-10, 10))
    cos, sin = np.cos(theta), np.sin(theta)

    def to_px(u: float, v: float) -> Pt:
        return (cx + scale * (u * cos - v * sin), cy + scale * (u * sin + v * cos))

    # Neutral background with a slight tint and vertical light gradient, varied per image.
    grey = rng.uniform(175, 210)
    tint = np.array([(6, 2, -8), (0, 0, 0), (-4, 0, 5), (3, -2, 3)][rng.integers(4)], float)
    ramp = np.linspace(-1, 1, size)[:, None, None] * rng.uniform(-8, 8)
    img = np.broadcast_to(grey + tint + rng.uniform(-3, 3, 3), (size, size, 3)) + ramp

    mask_im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_im)
    for poly in shape.polygons:
        draw.polygon([to_px(u, v) for u, v in poly], fill=255)
    # A dark outline (dilated mask) keeps white garments apart from a light background.
    k = 3 if size <= 96 else 5
    outline = np.asarray(mask_im.filter(ImageFilter.MaxFilter(k))) > 0
    inside = np.asarray(mask_im) > 0

    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    dx, dy = (xs + 0.5 - cx) / scale, (ys + 0.5 - cy) / scale
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    garment = np.where(_pattern_mask(product.pattern, u, v, rng)[..., None], shade, fill)
    img = np.where(outline[..., None], 60.0, img)
    img = np.where(inside[..., None], garment, img)

    # Features are drawn on a copy and pasted back through the mask, so they never leave the garment.
    flat = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    feat = flat.copy()
    fd, colour, w = ImageDraw.Draw(feat), tuple(int(c) for c in ink), max(2, round(0.04 * scale))
    if "logo" in product.features:  # a star, far bigger than a pattern dot, in an accent colour
        lu, lv = shape.logo
        star = [(lu + r * np.sin(a), lv - r * np.cos(a))
                for a, r in zip(np.arange(10) * np.pi / 5, [0.10, 0.045] * 5)]
        fd.polygon([to_px(a, b) for a, b in star], fill=LOGO_RGB, outline=colour, width=max(1, w // 2))
    if "pocket" in product.features:
        u0, v0, u1, v1 = shape.pocket
        corners = [to_px(u0, v0), to_px(u1, v0), to_px(u1, v1), to_px(u0, v1)]
        fd.line([*corners, corners[0]], fill=colour, width=w, joint="curve")
    if "zip" in product.features:
        (u0, v0), (u1, v1) = shape.zip
        fd.line([to_px(u0, v0), to_px(u1, v1)], fill=colour, width=w)
        tab = [to_px(u0 + du, v0 + dv) for du, dv in [(-0.04, 0.0), (0.04, 0.0), (0.04, 0.09), (-0.04, 0.09)]]
        fd.polygon(tab, fill=colour)
    out = np.asarray(Image.composite(feat, flat, mask_im), float)

    # Mild sensor noise last, so it does not shift the random draws of anything above.
    out += rng.normal(0, rng.uniform(3, 7), out.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def _sample_product(rng: np.random.Generator) -> Product:
    article_type = str(rng.choice(list(ARTICLES)))
    sleeved = ARTICLES[article_type].category in SLEEVED_CATEGORIES
    return Product(
        article_type=article_type,
        colour=str(rng.choice(list(COLOURS))),
        pattern=str(rng.choice(PATTERNS)),
        sleeve_length=str(rng.choice(SLEEVES)) if sleeved else None,
        features=tuple(f for f, keep in zip(FEATURES, rng.random(len(FEATURES)) < FEATURE_RATE) if keep),
    )


def _word(attribute: str, value: str, rng: np.random.Generator) -> str:
    words = TITLE_WORDS[attribute][value]
    if len(words) == 1 or rng.random() >= SYNONYM_RATE:
        return words[0]
    return str(rng.choice(words[1:]))


def _title(p: Product, rng: np.random.Generator) -> str:
    """A shop's title of `p`: brand, colour, pattern, sleeves, article, "with" its features;
    drawn from `rng` alone (not the images' generator), with TITLE_NOISE's noise."""
    if rng.random() < TITLE_NOISE["empty"]:
        return ""
    colour = p.colour
    if rng.random() < TITLE_NOISE["wrong_colour"]:
        colour = str(rng.choice([c for c in COLOURS if c != p.colour]))
    words = {"colour": [_word("colour", colour, rng)], "pattern": [_word("pattern", p.pattern, rng)],
             "sleeve_length": [_word("sleeve_length", p.sleeve_length, rng)] if p.sleeve_length else [],
             "features": [_word("features", f, rng) for f in p.features]}
    present = [(a, i) for a, ws in words.items() for i, w in enumerate(ws) if w]
    if present and rng.random() < TITLE_NOISE["missing_word"]:
        a, i = present[rng.integers(len(present))]
        words[a][i] = ""
    features = [w for w in words["features"] if w]
    parts = [str(rng.choice(BRANDS)), *words["colour"], *words["pattern"], *words["sleeve_length"],
             _word("article_type", p.article_type, rng)]
    if features:
        parts += ["with", " and ".join(features)]
    return " ".join(w for w in parts if w)


def _row(pid: str, p: Product, hide: dict[str, bool], title: str, views: int = 1) -> dict:
    """Catalog row: None where the label is unknown (or, for sleeves, not applicable)."""
    return {
        "id": pid, "category": ARTICLES[p.article_type].category, "image": f"images/{pid}.jpg",
        **{f"image_{k}": f"images/{pid}-{k}.jpg" for k in range(2, views + 1)},
        "article_type": p.article_type,
        "colour": None if hide.get("colour") else p.colour,
        "pattern": None if hide.get("pattern") else p.pattern,
        "sleeve_length": None if hide.get("sleeve_length") else p.sleeve_length,
        "features": None if hide.get("features") else list(p.features),
        "title": title,
    }


def _write(rows: list[dict], path: Path, fmt: str, columns: list[str] = COLUMNS) -> None:
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                feats = r["features"]
                # '|' joins several values; '-' is "known: none", an empty cell is unknown.
                r = {**r, "features": None if feats is None else ("|".join(feats) or "-")}
                w.writerow(["" if r[c] is None else r[c] for c in columns])
    elif fmt == "jsonl":
        with path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps({c: r[c] for c in columns}) + "\n" for r in rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([pa.field(c, pa.list_(pa.string()) if c == "features" else pa.string())
                            for c in columns])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    else:
        raise ValueError(f"unknown catalog format {fmt!r}: use csv, jsonl or parquet")


def _partial(image: Image.Image, half: int, rng: np.random.Generator) -> Image.Image:
    """The image with one half of the frame (0 left, 1 right, 2 top, 3 bottom) covered by a
    flat grey card: a view that shows part of the product."""
    out = np.asarray(image).copy()
    h, w = out.shape[:2]
    out[[(slice(None), slice(0, w // 2)), (slice(None), slice(w // 2, None)),
         (slice(0, h // 2), slice(None)), (slice(h // 2, None), slice(None))][half]] = int(rng.uniform(175, 210))
    return Image.fromarray(out)


def view_columns(views: int) -> list[str]:
    """The image columns of a catalog with `views` images per product: image, image_2, ..."""
    return ["image"] + [f"image_{k}" for k in range(2, views + 1)]


def generate_catalog(out_dir: str | Path, n_products: int = 400, *, seed: int = 0, image_size: int = 128,
                     bad_rows: bool = True, fmt: Literal["csv", "jsonl", "parquet"] = "csv",
                     views: int = 1) -> Path:
    """Write out_dir/images/<id>.jpg and out_dir/catalog.<fmt>; return the catalog path.

    Deterministic for a seed. With ``bad_rows``, three broken rows follow the good ones:
    BAD-MISSING (no image file), BAD-HTML (an HTML error page saved as .jpg) and
    BAD-LABEL (colour 'purple', not in the taxonomy, with a valid image). The titles come
    from their own generator, seeded from `seed`: the images and labels of a seed are those
    of a catalog without titles.

    With ``views`` > 1 each product has that many photos (columns view_columns(views),
    images/<id>.jpg, <id>-2.jpg, ...), each a fresh render of the product with half of the
    frame covered (_partial), the second the half the first shows, so that no single photo
    shows all of it; their draws come from a generator of their own, like the titles.
    """
    if fmt not in ("csv", "jsonl", "parquet"):
        raise ValueError(f"unknown catalog format {fmt!r}: use csv, jsonl or parquet")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    title_seq, view_seq = np.random.SeedSequence(seed).spawn(2)
    title_rng, view_rng = np.random.default_rng(title_seq), np.random.default_rng(view_seq)
    columns = COLUMNS if views == 1 else COLUMNS[:3] + view_columns(views)[1:] + COLUMNS[3:]

    def save(pid: str, p: Product) -> None:
        first = render_product(p, rng, image_size)
        if views == 1:
            first.save(images / f"{pid}.jpg", quality=90)
            return
        # the views take turns: the second shows the half the first hides, and so on
        half = int(view_rng.integers(4))
        _partial(first, half, view_rng).save(images / f"{pid}.jpg", quality=90)
        for k in range(2, views + 1):
            half ^= 1
            _partial(render_product(p, view_rng, image_size), half, view_rng).save(
                images / f"{pid}-{k}.jpg", quality=90)

    rows = []
    for i in range(n_products):
        pid, p = f"P{i + 1:05d}", _sample_product(rng)
        draws = rng.random(len(UNKNOWN_RATE))
        hide = {a: bool(d < rate) for (a, rate), d in zip(UNKNOWN_RATE.items(), draws)}
        rows.append(_row(pid, p, hide, _title(p, title_rng), views))
        save(pid, p)
    if bad_rows:
        p = _sample_product(rng)
        rows.append(_row("BAD-MISSING", p, {}, _title(p, title_rng), views))
        (images / "BAD-MISSING.jpg").unlink(missing_ok=True)  # in case out_dir is reused
        p = _sample_product(rng)
        rows.append(_row("BAD-HTML", p, {}, _title(p, title_rng), views))
        (images / "BAD-HTML.jpg").write_bytes(
            b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
            b"<body><h1>502 Bad Gateway</h1><p>The CDN could not fetch this image.</p></body></html>\n")
        p = Product(**{**_sample_product(rng).__dict__, "colour": "purple"})
        rows.append(_row("BAD-LABEL", p, {}, _title(p, title_rng), views))
        save("BAD-LABEL", p)

    path = out_dir / f"catalog.{fmt}"
    _write(rows, path, fmt, columns)
    logger.info("wrote %d products (%d bad) and their images to %s", len(rows), len(rows) - n_products, path)
    return path
