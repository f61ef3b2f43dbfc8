"""Catalogs the speed benchmarks read: generated large product photos, and a subset of the
shared real catalog (never copied into the repository: to a temporary folder only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from catalog_schemas.taxonomy import shipped_taxonomy

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/datasets/fashion-product-images-small"


def has_real_catalog() -> bool:
    return (SHARED / "styles.csv").exists()


def large_catalog(out: Path, n: int, side: int, *, seed: int = 0) -> tuple[Path, str, list[Path]]:
    """(catalog CSV, taxonomy, image files) of n demo products photographed at side x side px.

    Drawing a product at 1500 px takes ~2 s, so it is drawn at <= 320 px by
    `tagger.demo.sample.generate_catalog`, enlarged (bicubic) and given per-pixel sensor noise
    (+-6 levels): a JPEG of a studio photo's size (~0.35 MB at 1500 px, quality 90) whose
    decoding costs what a real one costs. Every file differs (ingest stores identical
    bytes once)."""
    from tagger.demo.sample import generate_catalog

    catalog = generate_catalog(out, n_products=n, seed=seed, image_size=min(side, 320), bad_rows=False)
    rng = np.random.default_rng(seed)
    files = sorted((out / "images").glob("*.jpg"))
    for f in files:
        with Image.open(f) as im:
            big = np.asarray(im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC), np.int16)
        noisy = np.clip(big + rng.integers(-6, 7, big.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(f, quality=90)
    return catalog, str(shipped_taxonomy("demo")), files


def real_catalog(out: Path, n: int) -> tuple[Path, str, list[Path]]:
    """(catalog CSV, taxonomy, image files) of the first n products of the shared real catalog
    that have an image, copied to `out` (a temporary folder)."""
    df = pd.read_csv(SHARED / "styles.csv", dtype=str, keep_default_na=False, on_bad_lines="skip")
    df = df[[(SHARED / "images" / f"{pid}.jpg").exists() for pid in df["id"]]].head(n)
    (out / "images").mkdir(parents=True, exist_ok=True)
    files = []
    for pid in df["id"]:
        dst = out / "images" / f"{pid}.jpg"
        dst.write_bytes((SHARED / "images" / f"{pid}.jpg").read_bytes())
        files.append(dst)
    df.to_csv(out / "styles.csv", index=False)
    return out / "styles.csv", str(shipped_taxonomy("fashion_product_images")), files
