"""Ingest throughput: our decode path (JPEG draft mode, one resize) vs a plain PIL
open/convert/thumbnail/save, per image and through the whole ingest, from one run.

    .venv/bin/python -m benchmarks.ingest_decode --images 200 --sides 1500,1000 --real-images 2000

- ours: `tagger.data.images.normalise_image` (what ingest runs per new image): header checks,
  `draft()` so libjpeg decodes at 1/2, 1/4 or 1/8 scale while the longest side stays
  >= the stored size (IngestConfig.image_max_side: 380 since it follows the largest
  training size; 512 before), EXIF orientation, RGB, one resize to it (OpenCV INTER_AREA;
  PIL LANCZOS with reducing_gap 3 before: benchmarks/decoders.py), JPEG q90;
- plain: `Image.open(...).convert("RGB")`, `thumbnail((side, side), LANCZOS)`, JPEG q90: what
  one writes without thinking about decode cost (convert() decodes at full size, so the
  draft that thumbnail() would apply comes too late).

Measured on the same bytes in memory, the two paths alternating image by image: decode only
(ours: decode_image with draft; plain: open + convert) and the whole per-image step, in
CPU ms/img (robust to other jobs on the machine); then `ingest_catalog`
end to end (read, hash, decode, resize, encode, shards, tables) into fresh lakes, once with
ours and twice with the plain step patched in (before and after: a drift check), with
`--ingest-workers` threads (1 = per-core figure).

Images: generated product photos of each `--sides` px (bicubic-enlarged demo drawings with
sensor noise, ~0.35 MB at 1500 px) and the first `--real-images` products of the shared real
catalog when present (../shared/datasets/..., 60x80 px JPEGs: nothing to shrink, so both
paths only decode and re-encode).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from benchmarks.catalogs import has_real_catalog, large_catalog, real_catalog  # noqa: E402
from tagger.config import IngestConfig  # noqa: E402
from tagger.data.images import decode_image, normalise_image  # noqa: E402
from tagger.ingest.run import ingest_catalog  # noqa: E402

MAX_SIDE = IngestConfig().image_max_side
QUALITY = IngestConfig().jpeg_quality


def plain_normalise(data: bytes, *, max_side: int, quality: int = 90, **_) -> tuple[bytes, int, int]:
    """The plain PIL path, with normalise_image's signature (so ingest can run it)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue(), img.width, img.height


def _plain_decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _ms_pair(plain, ours, items) -> tuple[float, float]:
    """Mean CPU ms/img of two functions over the same items, alternating per item, so a change
    in the machine's load during the run hits both sides alike."""
    plain(items[0]), ours(items[0])
    spent = [0.0, 0.0]
    for i, it in enumerate(items):
        order = ((0, plain), (1, ours)) if i % 2 == 0 else ((1, ours), (0, plain))
        for k, fn in order:
            t0 = time.process_time()
            fn(it)
            spent[k] += time.process_time() - t0
    return spent[0] / len(items) * 1000, spent[1] / len(items) * 1000


def _ingest_rate(catalog: Path, taxonomy: str, lake: Path, workers: int, plain: bool) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) of one ingest."""
    config = IngestConfig(workers=workers)
    c0 = time.process_time()
    with mock.patch("tagger.ingest.shards.normalise_image", plain_normalise if plain else normalise_image):
        result = ingest_catalog(str(catalog), taxonomy, str(lake), config)
    cpu = time.process_time() - c0
    assert result.rejected == 0 and result.images_stored > 0, result.to_dict()
    return result.images_fetched / result.seconds, result.images_fetched / cpu


def measure(catalog: Path, taxonomy: str, files: list[Path], tmp: Path, workers: int) -> dict:
    data = [f.read_bytes() for f in files]
    with Image.open(io.BytesIO(data[0])) as im:
        src = im.size
    img = decode_image(data[0], draft_side=MAX_SIDE)
    r = dict(images=len(data), source_px=list(src), draft_decode_px=list(img.size),
             stored_px=list(normalise_image(data[0], max_side=MAX_SIDE)[1:]),
             mean_file_kb=sum(map(len, data)) / len(data) / 1024)
    r["plain_decode_ms"], r["ours_decode_ms"] = _ms_pair(
        _plain_decode, lambda d: decode_image(d, draft_side=MAX_SIDE), data)
    r["decode_ratio"] = r["plain_decode_ms"] / r["ours_decode_ms"]
    r["plain_step_ms"], r["ours_step_ms"] = _ms_pair(
        lambda d: plain_normalise(d, max_side=MAX_SIDE, quality=QUALITY),
        lambda d: normalise_image(d, max_side=MAX_SIDE, quality=QUALITY), data)
    r["step_ratio"] = r["plain_step_ms"] / r["ours_step_ms"]
    plain1, plain1_cpu = _ingest_rate(catalog, taxonomy, tmp / "lake-plain-1", workers, plain=True)
    r["ours_ingest_img_s"], r["ours_ingest_img_cpu_s"] = _ingest_rate(
        catalog, taxonomy, tmp / "lake-ours", workers, plain=False)
    plain2, plain2_cpu = _ingest_rate(catalog, taxonomy, tmp / "lake-plain-2", workers, plain=True)
    r["plain_ingest_img_s"], r["plain_ingest_img_cpu_s"] = (plain1 + plain2) / 2, (plain1_cpu + plain2_cpu) / 2
    r["plain_ingest_runs_img_s"] = [plain1, plain2]
    r["ingest_ratio"] = r["ours_ingest_img_s"] / r["plain_ingest_img_s"]
    r["ingest_ratio_cpu"] = r["ours_ingest_img_cpu_s"] / r["plain_ingest_img_cpu_s"]
    return {k: round(v, 2) if isinstance(v, float) else [round(x, 2) for x in v]
            if isinstance(v, list) and v and isinstance(v[0], float) else v for k, v in r.items()}


def run(images: int = 200, sides: tuple[int, ...] = (1500,), real_images: int = 2000,
        ingest_workers: int = 1) -> dict:
    out = dict(max_side=MAX_SIDE, quality=QUALITY, ingest_workers=ingest_workers,
               cpu=platform.processor() or platform.machine(), cpus=os.cpu_count(), catalogs={})
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp = Path(tmp)
        for side in sides:
            d = tmp / f"gen{side}"
            catalog, taxonomy, files = large_catalog(d, images, side)
            out["catalogs"][f"generated_{side}"] = measure(catalog, taxonomy, files, d, ingest_workers)
        if real_images > 0 and has_real_catalog():
            d = tmp / "real"
            catalog, taxonomy, files = real_catalog(d, real_images)
            out["catalogs"]["real"] = measure(catalog, taxonomy, files, d, ingest_workers)
    return out


def rows(r: dict) -> list[str]:
    lines = []
    for name, m in r["catalogs"].items():
        src = "x".join(map(str, m["source_px"]))
        dec = "x".join(map(str, m["draft_decode_px"]))
        lines.append(
            f"| {time.strftime('%Y-%m-%d')}, {r['cpus']} CPU cores | {name}: {m['images']} JPEGs of {src} px "
            f"({m['mean_file_kb']:.0f} KB), decoded at {dec} | {m['plain_decode_ms']} / {m['ours_decode_ms']} ms "
            f"({m['decode_ratio']}x) | {m['plain_step_ms']} / {m['ours_step_ms']} ms (**{m['step_ratio']}x**) | "
            f"{m['plain_ingest_img_cpu_s']} / {m['ours_ingest_img_cpu_s']} ({m['ingest_ratio_cpu']}x) | "
            f"{m['plain_ingest_img_s']} ({m['plain_ingest_runs_img_s'][0]}, {m['plain_ingest_runs_img_s'][1]}) "
            f"/ {m['ours_ingest_img_s']} ({m['ingest_ratio']}x) |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200, help="generated photos per side")
    p.add_argument("--sides", default="1500", help="generated photos' sides in px, comma-separated")
    p.add_argument("--real-images", type=int, default=2000,
                   help="products of the shared real catalog when present (0: skip)")
    p.add_argument("--ingest-workers", type=int, default=1, help="IngestConfig.workers for the end-to-end runs")
    a = p.parse_args(argv)
    r = run(a.images, tuple(int(s) for s in a.sides.split(",") if s), a.real_images, a.ingest_workers)
    print(json.dumps(r, indent=2))
    for line in rows(r):
        print(line)
    return r


if __name__ == "__main__":
    main()
