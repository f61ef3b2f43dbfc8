"""Tagging (inference) throughput: our path vs what a user writes with timm alone, and vs
the model's pure forward speed on in-memory tensors (the limit), from one run.

    .venv/bin/python -m benchmarks.tag_throughput --backbone efficientnet_b0 --image-size 224 --images 256

- baseline: one JPEG file per product opened with PIL, timm's eval transform, fp32,
  default memory format, batch 32, no loader workers;
- ours: the lake's image shards read in order through `ProductImages` + `create_loader`
  (workers when the job is big enough), channels_last, `TagConfig.precision` (auto:
  bf16 where the hardware has it);
- limit: the same model, memory format and precision on a batch already in memory.

Images: the shared real catalog when present (../shared/datasets/...), else a generated
one. Weights are random (speed does not depend on them). Run it alone: this machine's
timings are ruined by a second busy process (OpenMP threads spin on shared cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from catalog_schemas.taxonomy import shipped_taxonomy  # noqa: E402
from tagger.data import ProductImages, create_transforms  # noqa: E402
from tagger.ingest import ingest_catalog, read_products  # noqa: E402
from tagger.model import create_model, data_config, resolve_precision  # noqa: E402
from tagger.predict import create_loader, predict_scores  # noqa: E402
from tagger.storage import open_storage  # noqa: E402

SHARED = ROOT.parent / "shared/datasets/fashion-product-images-small"


def _catalog(tmp: Path, n: int) -> tuple[Path, str, list[Path]]:
    """(catalog file, taxonomy, image files) of n products."""
    if (SHARED / "styles.csv").exists():
        import pandas as pd

        df = pd.read_csv(SHARED / "styles.csv", dtype=str, keep_default_na=False).head(n)
        df.to_csv(tmp / "styles.csv", index=False)
        (tmp / "images").mkdir()
        for pid in df["id"]:
            (tmp / "images" / f"{pid}.jpg").write_bytes((SHARED / "images" / f"{pid}.jpg").read_bytes())
        return tmp / "styles.csv", str(shipped_taxonomy("fashion_product_images")), [
            tmp / "images" / f"{pid}.jpg" for pid in df["id"]]
    from tagger.sample import generate_catalog

    path = generate_catalog(tmp, n_products=n, bad_rows=False, image_size=256)
    return path, str(shipped_taxonomy("demo")), sorted((tmp / "images").glob("*.jpg"))


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def run(backbone: str, image_size: int, n: int, batch: int, workers: int, precision: str) -> dict:
    import timm.data

    with tempfile.TemporaryDirectory(prefix="bench-tag-") as tmp:
        catalog, taxonomy, files = _catalog(Path(tmp), n)
        lake = str(Path(tmp) / "lake")
        ingest_catalog(str(catalog), taxonomy, lake)
        products = read_products(open_storage(lake)).to_pylist()
        model = create_model(backbone, 64).eval()
        device = torch.device("cpu")
        prec = resolve_precision(device, precision)

        # baseline: PIL per file + timm's eval transform, fp32, NCHW, batch 32
        cfg = timm.data.resolve_data_config({"input_size": (3, image_size, image_size)}, model=model)
        tf = timm.data.create_transform(**cfg)

        @torch.inference_mode()
        def baseline():
            for i in range(0, len(files), 32):
                x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[i:i + 32]])
                torch.sigmoid(model(x))

        d = data_config(model, image_size)
        ds = ProductImages(lake, [p["image_shard"] for p in products], [p["image_hash"] for p in products],
                           create_transforms(image_size, d["mean"], d["std"], train=False))

        def ours():
            predict_scores(model, create_loader(ds, batch, workers), device, precision=prec, desc="ours")

        x = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)

        @torch.inference_mode()
        def limit():
            m = model.to(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                for _ in range(0, len(files), batch):
                    torch.sigmoid(m(x))

        baseline()  # warm-up (allocator, oneDNN primitives) for every path, then measure
        rates = {"baseline": _rate(baseline, len(files))}
        model.to(memory_format=torch.contiguous_format)
        rates["ours"] = _rate(ours, len(products))
        rates["limit"] = _rate(limit, len(files))
        model.to(memory_format=torch.contiguous_format)
        rates["baseline_again"] = _rate(baseline, len(files))  # drift check within the run
    base = (rates["baseline"] + rates["baseline_again"]) / 2
    return dict(backbone=backbone, image_size=image_size, images=len(files), batch=batch,
                workers=workers, precision=prec, threads=torch.get_num_threads(),
                **{k: round(v, 1) for k, v in rates.items()},
                speedup=round(rates["ours"] / base, 2), of_limit=round(rates["ours"] / rates["limit"], 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_b0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    a = p.parse_args()
    r = run(a.backbone, a.image_size, a.images, a.batch, a.workers, a.precision)
    print(json.dumps(r, indent=2))
    print(f"| {time.strftime('%Y-%m-%d')}, {platform.machine()}, {r['threads']} threads | {r['backbone']} "
          f"@ {r['image_size']} px, {r['images']} images, {r['precision']} | {r['baseline']} | "
          f"{r['ours']} | {r['speedup']}x | {r['limit']} | {r['of_limit']} |")


if __name__ == "__main__":
    main()
