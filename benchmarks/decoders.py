"""Decode + resize to the stored size: PIL with JPEG draft (what ingest does) against other
decoders, per image, from one run; and how far each one's pixels are from a full decode
resized with LANCZOS (the reference stored image).

    .venv/bin/python -m benchmarks.decoders --images 40 --sides 800,1500

Candidates (each skipped, and said so, where its package is not installed):

- pil_draft: tagger.data.images.decode_image(draft_side=S) + the LANCZOS resize of
  normalise_image (reducing_gap 3): ingest's path, JPEG encoding left out (the same for all);
- pil_draft_area: the same decode, resized with OpenCV's INTER_AREA (what the other
  decoders below are paired with: the decoder's share and the filter's share apart);
- cv2: OpenCV's imdecode at IMREAD_REDUCED_COLOR_2/4/8 (libjpeg's DCT scaling, the largest
  reduction that stays >= S) + INTER_AREA resize (opencv-python-headless is installed for
  albumentations already);
- simplejpeg: libjpeg-turbo's decoder with min_width/min_height = S (DCT scaling) + the
  same INTER_AREA resize;
- pyvips: thumbnail_buffer(S) (shrink-on-load + lanczos3).

Timing: CPU seconds per image on one thread (OpenCV and vips limited to one), candidates
alternating image by image, `--passes` passes; medians in ms. Photos: demo drawings enlarged
to side x side px with +-6 levels of noise, JPEG q90 (benchmarks/catalogs.py's recipe).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

STORED = 380


def photos(n: int, side: int) -> list[bytes]:
    from tagger.demo.sample import _sample_product, render_product

    rng, out = np.random.default_rng(0), []
    for _ in range(n):
        img = render_product(_sample_product(rng), rng, 192).resize((side, side), Image.Resampling.BICUBIC)
        arr = np.clip(np.asarray(img, np.int16) + rng.integers(-6, 7, (side, side, 3), dtype=np.int16), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _target(w: int, h: int, s: int) -> tuple[int, int]:
    scale = s / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def candidates() -> dict:
    import cv2

    from tagger.data.images import decode_image

    cv2.setNumThreads(1)
    found, missing = {}, []

    def pil_draft(data):
        img = decode_image(data, draft_side=STORED)
        return np.asarray(img.resize(_target(*img.size, STORED), Image.Resampling.LANCZOS, reducing_gap=3.0))

    found["pil_draft"] = pil_draft

    def pil_draft_area(data):
        rgb = np.asarray(decode_image(data, draft_side=STORED))
        return cv2.resize(rgb, _target(rgb.shape[1], rgb.shape[0], STORED), interpolation=cv2.INTER_AREA)

    found["pil_draft_area"] = pil_draft_area

    def cv2_reduced(data):
        with Image.open(io.BytesIO(data)) as im:  # the header only: the scale that stays >= S
            w, h = im.size
        k = max([f for f in (1, 2, 4, 8) if max(w, h) // f >= STORED] or [1])
        flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                8: cv2.IMREAD_REDUCED_COLOR_8}[k]
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        small = cv2.resize(bgr, _target(bgr.shape[1], bgr.shape[0], STORED), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)

    found["cv2"] = cv2_reduced
    try:
        import simplejpeg

        def simple(data):
            rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=STORED, min_height=STORED)
            return cv2.resize(rgb, _target(rgb.shape[1], rgb.shape[0], STORED), interpolation=cv2.INTER_AREA)

        found["simplejpeg"] = simple
    except ImportError:
        missing.append("simplejpeg")
    try:
        import pyvips

        pyvips.concurrency_set(1)
        pyvips.cache_set_max(0)

        def vips(data):
            img = pyvips.Image.thumbnail_buffer(data, STORED)
            return np.ndarray(buffer=img.write_to_memory(), dtype=np.uint8,
                              shape=(img.height, img.width, img.bands))

        found["pyvips"] = vips
    except (ImportError, OSError):
        missing.append("pyvips")
    return found, missing


def measure(side: int, n: int, passes: int) -> dict:
    data = photos(n, side)
    found, missing = candidates()
    reference = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB").resize((STORED, STORED), Image.Resampling.LANCZOS),
                            np.int16) for d in data]
    ms: dict[str, list[float]] = {k: [] for k in found}
    err: dict[str, list[float]] = {k: [] for k in found}
    for p in range(passes):
        for i, d in enumerate(data):
            for name, fn in found.items():
                t0 = time.process_time()
                out = fn(d)
                ms[name].append((time.process_time() - t0) * 1e3)
                if p == 0:
                    err[name].append(float(np.abs(out.astype(np.int16) - reference[i]).mean()))
    med = {k: float(np.median(v)) for k, v in ms.items()}
    return dict(side=side, images=n, passes=passes, missing=missing,
                ms={k: round(v, 2) for k, v in med.items()},
                vs_pil_draft={k: round(med["pil_draft"] / v, 2) for k, v in med.items()},
                mean_abs_diff_to_full_lanczos={k: round(float(np.mean(v)), 2) for k, v in err.items()})


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--sides", default="800,1500")
    p.add_argument("--passes", type=int, default=3)
    a = p.parse_args(argv)
    out = {"stored_px": STORED, "results": [measure(int(s), a.images, a.passes) for s in a.sides.split(",")]}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
