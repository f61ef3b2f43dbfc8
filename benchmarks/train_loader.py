"""Training input throughput per loader worker (decode + augment + collate) at 380 px: our
image shards vs the original JPEG files opened with PIL, from one run.

    .venv/bin/python -m benchmarks.train_loader --images 256 --side 1500 --image-size 380

- ours: `tagger.data.dataset.ProductImages` over the lake's image shards (JPEGs stored at <= 512 px
  by ingest) with `create_transforms(train=True)` (albumentations: fit + white pad, affine,
  flip, brightness/contrast; uint8), the default collate, and `BatchNormalize` over the
  uint8 batch (training does that on the GPU; here it is counted on the CPU, against us);
- baseline: what a user writes with timm alone: a Dataset that opens the original JPEG file
  per item with PIL (`.convert("RGB")`) and applies `timm.data.create_transform(380,
  is_training=True)` (random resized crop, flip, colour jitter, normalise), default collate.

Both go through a `DataLoader` (batch 32, shuffled, labels as in training) with
`num_workers=0`: the main process does a worker's whole job, so images per CPU second of
the process is one worker's throughput on a core of its own (robust to other jobs on the
machine; images per wall second are printed too). torch and OpenCV are held to one thread
each. `--workers N` adds a run with N worker processes (forkserver, as
`tagger.data.loader.create_loader` starts them; wall clock only).

From the per-worker (CPU) rate: the loader workers needed to feed EfficientNet-B4 training
at 380 px, ceil(target / rate), for timm's published ~240 img/s on an RTX 3090 (AMP,
channels_last) and for an assumed 1000 img/s on a current datacenter GPU (H100 class:
"several times" a 3090; not measured here). The per-image decode and transform costs are
measured separately too (CPU ms), the two paths alternating image by image.

Images: generated product photos of `--side` px (bicubic-enlarged demo drawings with sensor
noise), and the first `--real-images` products of the shared real catalog when present
(../shared/datasets/...). The real photos are 60x80 px: both paths then upsample tiny
images, which says little about decode cost at 380 px.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from benchmarks.catalogs import has_real_catalog, large_catalog, real_catalog  # noqa: E402
from tagger.data.dataset import ProductImages
from tagger.data.transforms import BatchNormalize, create_transforms  # noqa: E402
from tagger.data.images import load_rgb  # noqa: E402
from tagger.ingest.run import ingest_catalog
from tagger.lake import read_products  # noqa: E402
from tagger.io.storage import open_storage  # noqa: E402

TARGETS = {"rtx3090": 240, "h100_assumed": 1000}  # EfficientNet-B4 @ 380 training img/s
OUTPUTS = 64  # label columns (any number: collate cost only)


class FileImages(Dataset):
    """The timm-only baseline: one original JPEG file per item, PIL + a torchvision transform."""

    def __init__(self, files, transform, targets, mask):
        self.files, self.transform, self.targets, self.mask = files, transform, targets, mask

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            x = self.transform(im.convert("RGB"))
        return x, torch.from_numpy(self.targets[i]), torch.from_numpy(self.mask[i])


def _loader_rate(ds, batch: int, workers: int, seed: int = 0, normalize=None) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) of one full shuffled
    pass, after a warm-up batch (shard read, worker start). With workers=0 the CPU rate is
    what one worker delivers on a core of its own, whatever else the machine runs.
    `normalize` is applied to each batch (ours: uint8 -> float model input)."""
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                        prefetch_factor=4 if workers else None, persistent_workers=workers > 0,
                        multiprocessing_context="forkserver" if workers else None,
                        generator=torch.Generator().manual_seed(seed))
    next(iter(loader))  # warm-up: our shard cache, OpenCV/timm first calls, worker start
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    for x, _, _ in loader:
        if normalize is not None:
            x = normalize(x)
        n += len(x)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def _ms_pair(baseline, ours, items) -> tuple[float, float]:
    """Mean CPU ms/img of two functions over paired items, alternating per item, so a change
    in the machine's load during the run hits both sides alike."""
    baseline(items[0][0]), ours(items[0][1])
    spent = [0.0, 0.0]
    for i, (b, o) in enumerate(items):
        order = ((0, baseline, b), (1, ours, o)) if i % 2 == 0 else ((1, ours, o), (0, baseline, b))
        for k, fn, it in order:
            t0 = time.process_time()
            fn(it)
            spent[k] += time.process_time() - t0
    return spent[0] / len(items) * 1000, spent[1] / len(items) * 1000


def measure(catalog: Path, taxonomy: str, files: list[Path], lake: str, image_size: int, batch: int,
            workers: int) -> dict:
    import timm.data

    ingest_catalog(str(catalog), taxonomy, lake)
    products = read_products(open_storage(lake)).to_pylist()
    by_id = {p["product_id"]: p for p in products}
    # Same products in the same order on both sides (files are named by product id).
    files = [f for f in files if f.stem in by_id]
    products = [by_id[f.stem] for f in files]
    n = len(files)
    targets = np.zeros((n, OUTPUTS), np.float32)
    mask = np.ones((n, OUTPUTS), np.float32)

    ours_tf = create_transforms(image_size, train=True)
    ours_norm = BatchNormalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)  # a fresh tensor per batch, as training
    ours = ProductImages(lake, [p["image_shard"] for p in products], [p["image_hash"] for p in products],
                         ours_tf, targets, mask)
    base_tf = timm.data.create_transform(image_size, is_training=True)
    base = FileImages(files, base_tf, targets, mask)

    stored = [ours.cache.get(s, h) for s, h in zip(ours.shards, ours.hashes)]
    sample = list(range(min(n, 64)))
    ours_decoded = [load_rgb(stored[i]) for i in sample]

    def pil_open(f):
        with Image.open(f) as im:
            return im.convert("RGB")

    base_decoded = [pil_open(files[i]) for i in sample]
    with Image.open(files[0]) as im:
        source_size = im.size
    stored_size = Image.open(io.BytesIO(stored[0])).size

    r = dict(images=n, source_px=list(source_size), stored_px=list(stored_size))
    r["baseline_decode_ms"], r["ours_decode_ms"] = _ms_pair(
        lambda i: pil_open(files[i]), lambda i: load_rgb(stored[i]), [(i, i) for i in sample])
    r["baseline_transform_ms"], r["ours_transform_ms"] = _ms_pair(
        base_tf, lambda a: ours_tf(image=a), list(zip(base_decoded, ours_decoded)))

    # Loader passes, baseline first and last (drift check within the run).
    (base1, base1_cpu) = _loader_rate(base, batch, 0)
    r["ours_img_s"], r["ours_img_cpu_s"] = _loader_rate(ours, batch, 0, normalize=ours_norm)
    (base2, base2_cpu) = _loader_rate(base, batch, 0)
    r["baseline_img_s"], r["baseline_img_cpu_s"] = (base1 + base2) / 2, (base1_cpu + base2_cpu) / 2
    r["baseline_runs_img_s"] = [base1, base2]
    r["ratio"] = r["ours_img_s"] / r["baseline_img_s"]
    r["ratio_cpu"] = r["ours_img_cpu_s"] / r["baseline_img_cpu_s"]
    # Per worker = per CPU second: a worker on a core of its own (wall figures depend on load).
    r["workers_needed"] = {
        name: {k: math.ceil(t / r[f"{k}_img_cpu_s"]) for k in ("ours", "baseline")}
        for name, t in TARGETS.items()
    }
    if workers > 0:
        r[f"ours_{workers}_workers_img_s"] = _loader_rate(ours, batch, workers, normalize=ours_norm)[0]
        r[f"baseline_{workers}_workers_img_s"] = _loader_rate(base, batch, workers)[0]
    return {k: _round(v) for k, v in r.items()}


def _round(v):
    if isinstance(v, float):
        return round(v, 2)
    if isinstance(v, list):
        return [_round(x) for x in v]
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    return v


def run(images: int = 256, side: int = 1500, image_size: int = 380, batch: int = 32, workers: int = 0,
        real_images: int = 256) -> dict:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    out = dict(image_size=image_size, batch=batch, threads=torch.get_num_threads(),
               cpu=platform.processor() or platform.machine(), cpus=os.cpu_count(),
               targets_img_s=TARGETS, generated=None, real=None)
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        tmp = Path(tmp)
        catalog, taxonomy, files = large_catalog(tmp / "gen", images, side)
        out["generated"] = measure(catalog, taxonomy, files, str(tmp / "gen-lake"), image_size, batch, workers)
        if real_images > 0 and has_real_catalog():
            catalog, taxonomy, files = real_catalog(tmp / "real", real_images)
            out["real"] = measure(catalog, taxonomy, files, str(tmp / "real-lake"), image_size, batch, workers)
    return out


def rows(r: dict) -> list[str]:
    lines = []
    for name in ("generated", "real"):
        m = r[name]
        if m is None:
            continue
        w = m["workers_needed"]
        src = "x".join(map(str, m["source_px"]))
        lines.append(
            f"| {time.strftime('%Y-%m-%d')}, {r['cpus']} CPU cores, 1 thread | {name}: {m['images']} JPEGs of "
            f"{src} px @ {r['image_size']} px, batch {r['batch']} | {m['baseline_img_cpu_s']} / "
            f"{m['ours_img_cpu_s']} (**{m['ratio_cpu']}x**) | {m['baseline_img_s']} "
            f"({m['baseline_runs_img_s'][0]}, {m['baseline_runs_img_s'][1]}) / {m['ours_img_s']} "
            f"({m['ratio']}x) | decode {m['baseline_decode_ms']} / {m['ours_decode_ms']} ms, "
            f"transform {m['baseline_transform_ms']} / {m['ours_transform_ms']} ms | "
            f"{w['rtx3090']['baseline']} / {w['rtx3090']['ours']} | "
            f"{w['h100_assumed']['baseline']} / {w['h100_assumed']['ours']} |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="generated photos")
    p.add_argument("--side", type=int, default=1500, help="generated photos' side in px")
    p.add_argument("--image-size", type=int, default=380, help="training input size (EfficientNet-B4: 380)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="also measure N loader worker processes")
    p.add_argument("--real-images", type=int, default=256,
                   help="products of the shared real catalog when present (0: skip)")
    a = p.parse_args(argv)
    r = run(a.images, a.side, a.image_size, a.batch, a.workers, a.real_images)
    print(json.dumps(r, indent=2))
    for line in rows(r):
        print(line)
    return r


if __name__ == "__main__":
    main()
