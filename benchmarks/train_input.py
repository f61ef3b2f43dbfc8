"""Training input over lakes larger than the loader's cache: shard reads per epoch and img/s,
the old sampler (uniform random order) vs shard-aware shuffling, from one run.

    .venv/bin/python -m benchmarks.train_input --per-shard 100 --cache-shards 32 --factor 20
    .venv/bin/python -m benchmarks.train_input --train-epochs 3   # + quality on the shared catalog

Two synthetic lakes of image shards (`--per-shard` noisy JPEGs of `--side` px each, as ingest
stores them): a small one that fits in the loader's ShardCache (`--cache-shards` shards' bytes)
and a large one `--factor` times the cache. Each is read for `--epochs` epochs through
`ProductImages` + `create_loader` (the training transforms at `--image-size`, batch `--batch`,
workers 0: the main process does one loader worker's whole job), once with each sampler:

- random: DistributedSampler, what training used before (`TrainConfig.sampler=random`);
- shards: `tagger.data.shuffle.ShardBatchSampler` (the default).

Per run: bytes of shards read per epoch / the lake's shard bytes (ShardCache's counter; goal
<= 1.1 for both lakes) and images per second (goal: the large lake within 10% of the small
one). `--max-batches` stops a run early (the old sampler over a large lake is slow); the read
ratio is then projected per epoch from the bytes read per image. `--latency-ms` / `--mbps`
add an object store's cost per shard read (a sleep; 0: local disk, pages cached by the OS).

`--train-epochs N` also trains a catalog (the shared real catalog's first `--train-products`
products when present, else the generated demo catalog) once with each sampler, same seed,
and reports validation and test mAP (goal: within noise of each other).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DistributedSampler  # noqa: E402

from catalog_schemas.tables import IMAGES  # noqa: E402
from tagger.data.dataset import ProductImages  # noqa: E402
from tagger.data.loader import create_loader  # noqa: E402
from tagger.data.shuffle import ShardBatchSampler  # noqa: E402
from tagger.data.transforms import create_transforms  # noqa: E402
from tagger.io.storage import open_storage, write_table  # noqa: E402
from tagger.lake import image_shard_path  # noqa: E402

SAMPLERS = ("random", "shards")


def synthetic_lake(path: Path, shards: int, per_shard: int, side: int, seed: int = 0
                   ) -> tuple[list[str], list[str], int]:
    """Image shards only: per product its shard and hash, and the image bytes of all shards.
    A pool of 64 distinct noisy JPEGs is reused under new hashes (decoding costs the same)."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(64):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, "JPEG", quality=90)
        pool.append(out.getvalue())
    storage, names, hashes, total = open_storage(path), [], [], 0
    for s in range(shards):
        data = [pool[int(k)] for k in rng.integers(0, len(pool), per_shard)]
        keys = [f"{s:05d}-{k:04d}" for k in range(per_shard)]
        write_table(storage, image_shard_path(f"shard-{s:05d}.parquet"),
                    pa.table([keys, [side] * per_shard, [side] * per_shard, data], schema=IMAGES))
        names += [f"shard-{s:05d}.parquet"] * per_shard
        hashes += keys
        total += sum(map(len, data))
    return names, hashes, total


def _slow_reads(cache, latency_ms: float, mbps: float) -> None:
    """Make the cache's shard reads cost what an object store's would (latency + transfer)."""
    load = cache._load

    def slow(shard: str):
        images = load(shard)
        time.sleep(latency_ms / 1e3 + (cache._sizes[shard] / (mbps * 1e6) if mbps else 0.0))
        return images

    cache._load = slow


def measure(lake: Path, shards: list[str], hashes: list[str], total: int, sampler: str, *,
            cache_bytes: int, image_size: int, batch: int, epochs: int, seed: int = 0,
            max_batches: int | None = None, partitions: int | None = None, window: int = 2,
            latency_ms: float = 0.0, mbps: float = 0.0) -> dict:
    """One sampler over one lake: img/s and shard bytes read per epoch / shard bytes."""
    ds = ProductImages(str(lake), shards, hashes, create_transforms(image_size, train=True))
    ds.cache.max_bytes = cache_bytes
    if latency_ms or mbps:
        _slow_reads(ds.cache, latency_ms, mbps)
    if sampler == "shards":
        order = ShardBatchSampler(shards, batch, seed=seed, partitions=partitions, window=window)
        loader = create_loader(ds, batch, 0, batch_sampler=order, seed=seed)
    else:
        order = DistributedSampler(ds, num_replicas=1, rank=0, seed=seed, drop_last=True)
        loader = create_loader(ds, batch, 0, shuffle=True, sampler=order, drop_last=True, seed=seed)
    seen, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        order.set_epoch(epoch)
        for step, (x, _) in enumerate(loader):
            seen += len(x)
            if max_batches is not None and step + 1 >= max_batches:
                break
    seconds = time.perf_counter() - t0
    if not seen:
        raise SystemExit(f"{sampler}: no whole batch of {batch} in a lake of {len(shards)} images; "
                         "raise --per-shard or --cache-shards, or lower --batch")
    per_epoch = ds.cache.bytes_read / seen * len(shards)  # exact when whole epochs ran
    return dict(sampler=sampler, images=seen, seconds=round(seconds, 2), img_s=round(seen / seconds, 1),
                read_ratio=round(per_epoch / total, 3), shard_reads=ds.cache.reads)


def run(per_shard: int = 100, side: int = 128, cache_shards: int = 32, factor: int = 20,
        image_size: int = 96, batch: int = 64, epochs: int = 1, max_batches: int | None = None,
        partitions: int | None = None, window: int = 2, latency_ms: float = 0.0, mbps: float = 0.0,
        seed: int = 0) -> dict:
    """Both lakes x both samplers (see the module docstring)."""
    torch.set_num_threads(1)
    out = dict(cpus=os.cpu_count(), per_shard=per_shard, side=side, cache_shards=cache_shards,
               factor=factor, image_size=image_size, batch=batch, epochs=epochs, window=window,
               latency_ms=latency_ms, mbps=mbps, lakes={})
    with tempfile.TemporaryDirectory(prefix="train-input-") as tmp:
        for name, n in (("small", max(1, cache_shards - 1)), ("large", factor * cache_shards)):
            shards, hashes, total = synthetic_lake(Path(tmp) / name, n, per_shard, side, seed)
            cache_bytes = int(cache_shards * total / n)
            runs = {s: measure(Path(tmp) / name, shards, hashes, total, s, cache_bytes=cache_bytes,
                               image_size=image_size, batch=batch, epochs=epochs, seed=seed,
                               max_batches=max_batches, partitions=partitions, window=window,
                               latency_ms=latency_ms, mbps=mbps) for s in SAMPLERS}
            out["lakes"][name] = dict(shards=n, images=len(shards), shard_mb=round(total / n / 1e6, 2),
                                      lake_over_cache=round(n / cache_shards, 2), runs=runs)
    for s in SAMPLERS:
        out[f"{s}_large_over_small_img_s"] = round(
            out["lakes"]["large"]["runs"][s]["img_s"] / out["lakes"]["small"]["runs"][s]["img_s"], 3)
    return out


def train_compare(epochs: int, products: int, seed: int = 0, backbone: str = "mobilenetv3_small",
                  image_size: int = 96, batch: int = 64) -> dict:
    """One catalog trained once with each sampler (same seed): validation and test mAP."""
    from benchmarks.catalogs import has_real_catalog, real_catalog
    from tagger.config import IngestConfig, TrainConfig
    from tagger.ingest.run import ingest_catalog
    from tagger.model.versions import read_card
    from tagger.train.run import train_model

    out = {}
    with tempfile.TemporaryDirectory(prefix="train-input-q-") as tmp:
        if has_real_catalog():
            catalog, taxonomy, _ = real_catalog(Path(tmp) / "catalog", products)
            source = f"shared real catalog, first {products} products"
        else:
            from catalog_schemas.taxonomy import shipped_taxonomy
            from tagger.demo.sample import generate_catalog

            catalog = generate_catalog(Path(tmp) / "catalog", n_products=products, seed=seed, image_size=64)
            taxonomy, source = str(shipped_taxonomy("demo")), f"generated demo catalog, {products} products"
        lake = str(Path(tmp) / "lake")
        ingest_catalog(str(catalog), taxonomy, lake, IngestConfig(shard_size=max(8, products // 50)))
        for sampler in SAMPLERS:
            config = TrainConfig(backbone=backbone, image_size=image_size, epochs=epochs, batch_size=batch,
                                 seed=seed, sampler=sampler, workers=0, device="cpu", promote="manual",
                                 pretrained=False)
            t0 = time.perf_counter()
            card = read_card(open_storage(lake), train_model(lake, config))
            val = [h.val_mAP for h in card.history if h.val_mAP is not None]
            out[sampler] = dict(val_mAP=round(max(val), 4) if val else None,
                                test_mAP=round(card.metrics["mAP"], 4), seconds=round(time.perf_counter() - t0, 1))
    return dict(source=source, epochs=epochs, backbone=backbone, image_size=image_size, **out)


def rows(r: dict) -> list[str]:
    """Markdown rows: one per lake, both samplers side by side."""
    lines = []
    for name, lake in r["lakes"].items():
        old, new = lake["runs"]["random"], lake["runs"]["shards"]
        lines.append(
            f"| {time.strftime('%Y-%m-%d')}, {r['cpus']} CPU cores | {name}: {lake['shards']} shards x "
            f"{r['per_shard']} JPEGs of {r['side']} px ({lake['lake_over_cache']}x the cache) @ "
            f"{r['image_size']} px, batch {r['batch']} | {old['read_ratio']} / **{new['read_ratio']}** | "
            f"{old['img_s']} / **{new['img_s']}** |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-shard", type=int, default=100, help="images per shard")
    p.add_argument("--side", type=int, default=128, help="stored images' side in px")
    p.add_argument("--cache-shards", type=int, default=32, help="the loader cache, in shards")
    p.add_argument("--factor", type=int, default=20, help="the large lake, in caches")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-batches", type=int, default=None, help="stop each run after N batches")
    p.add_argument("--partitions", type=int, default=None, help="ShardBatchSampler streams (default: 8)")
    p.add_argument("--window", type=int, default=2, help="TrainConfig.shuffle_window")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added per shard read")
    p.add_argument("--mbps", type=float, default=0.0, help="shard read bandwidth, MB/s (0: unlimited)")
    p.add_argument("--train-epochs", type=int, default=0, help="also train a catalog with each sampler")
    p.add_argument("--train-products", type=int, default=5000)
    p.add_argument("--train-backbone", default="mobilenetv3_small")
    a = p.parse_args(argv)
    r = run(a.per_shard, a.side, a.cache_shards, a.factor, a.image_size, a.batch, a.epochs, a.max_batches,
            a.partitions, a.window, a.latency_ms, a.mbps)
    if a.train_epochs:
        r["quality"] = train_compare(a.train_epochs, a.train_products, backbone=a.train_backbone)
    print(json.dumps(r, indent=2))
    for line in rows(r):
        print(line)
    return r


if __name__ == "__main__":
    main()
