"""Tagging (inference) throughput: our path vs what a user writes with timm alone, and vs
the model's pure forward speed on in-memory tensors (the limit), from one run.

    .venv/bin/python -m benchmarks.tag_throughput --backbone efficientnet_b0 --image-size 224 --images 256
    .venv/bin/python -m benchmarks.tag_throughput --backbone efficientnet_b4 --image-size 380 --images 256

- baseline: one JPEG file per product opened with PIL, timm's eval transform, fp32,
  default memory format, batch 32, no loader workers;
- ours: the lake's image shards read in order through `ProductImages` + `create_loader`
  (workers when the job is big enough), scored by the runtime `TagConfig.runtime` chooses
  (`--runtime`, default auto: ONNX Runtime fp32 on the CPU unless bf16 is asked for, else torch
  with channels_last and `TagConfig.precision`; tagger/model/runtime.py);
- limit: the forward pass of that runtime on a batch already in memory (an ONNX Runtime
  session, or the torch model with the same memory format and precision);
- also measured: our loader with the torch path (`torch_path`) and torch's own limit
  (`torch_limit`), so the runtime's share of the gain is visible.

Agreement: ours against the torch fp32 path on the same images, in the same order: the
largest absolute score difference, and the share of equal thresholded decisions at 0.5
and at per-output thresholds drawn between the 20th and 80th percentile of each output's
scores (seed 0). Weights are random (speed does not depend on them); the head is redrawn
so that each output's logits have std 3 on the images, a trained model's spread (timm's
random head puts every score within 1e-4 of 0.5, where any comparison is trivially tight).
Said in the output.

Timing: every path runs once to warm up (allocator, oneDNN primitives, ONNX Runtime's
first runs, our shard cache), then `--repeats` interleaved rounds of all paths; rates are
the medians, and the speed-up and the fraction of the limit are medians of the per-round
ratios (a slow spell of this shared machine hits all paths of a round alike).

Images: the shared real catalog when present (../shared/datasets/...), else a generated
one. Run it alone: this machine's timings are ruined by a second busy process (OpenMP
threads spin on shared cores). The ONNX export (seconds, cached per weights) is done
before timing, like every other warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from catalog_schemas.taxonomy import shipped_taxonomy  # noqa: E402
from tagger.data.dataset import ProductImages
from tagger.data.transforms import BatchNormalize, create_transforms  # noqa: E402
from tagger.ingest.run import ingest_catalog
from tagger.lake import read_products  # noqa: E402
from tagger.model.device import resolve_precision
from tagger.model.factory import create_model, data_config  # noqa: E402
from tagger.data.loader import create_loader
from tagger.model.predict import predict_scores  # noqa: E402
from tagger.model.runtime import RUNTIMES, onnx_session, predict_with_runtime, resolve_runtime  # noqa: E402
from tagger.io.storage import open_storage  # noqa: E402

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
    from tagger.demo.sample import generate_catalog

    path = generate_catalog(tmp, n_products=n, bad_rows=False, image_size=256)
    return path, str(shipped_taxonomy("demo")), sorted((tmp / "images").glob("*.jpg"))


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def agreement(ref: np.ndarray, ours: np.ndarray, seed: int = 0) -> dict:
    """How far our scores are from the fp32 reference and how often thresholded decisions
    agree: at 0.5, and at per-output thresholds between the 20th and 80th percentile."""
    rng = np.random.default_rng(seed)
    cuts = np.array([np.quantile(ref[:, k], rng.uniform(0.2, 0.8)) for k in range(ref.shape[1])])
    diff = np.abs(ours - ref)
    return dict(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
                agree_at_0_5=float(((ref >= 0.5) == (ours >= 0.5)).mean()),
                agree_at_percentile_thresholds=float(((ref >= cuts) == (ours >= cuts)).mean()),
                reference_score_std=float(ref.std()))


@torch.no_grad()
def _spread_head(model: torch.nn.Module, images: torch.Tensor, logit_std: float = 3.0) -> None:
    """Redraw the random head so each output's logits on these images have mean 0 and std
    `logit_std`, like a trained model's. timm's random-init head gives every score within
    1e-4 of 0.5, where any score comparison would be trivially tight."""
    f = model.forward_head(model.forward_features(images), pre_logits=True)
    head = model.get_classifier()
    w = torch.randn(head.out_features, f.shape[1], generator=torch.Generator().manual_seed(0))
    w /= ((f @ w.T).std(0) / logit_std)[:, None]
    head.weight.copy_(w)
    head.bias.copy_(-(f @ w.T).mean(0))


def run(backbone: str, image_size: int, n: int, batch: int, workers: int, precision: str,
        runtime: str = "auto", repeats: int = 3) -> dict:
    import timm.data

    with tempfile.TemporaryDirectory(prefix="bench-tag-") as tmp:
        os.environ["TAGGER_ONNX_CACHE"] = str(Path(tmp) / "onnx")  # a random model: no reuse
        catalog, taxonomy, files = _catalog(Path(tmp), n)
        lake = str(Path(tmp) / "lake")
        ingest_catalog(str(catalog), taxonomy, lake)
        products = read_products(open_storage(lake)).to_pylist()
        model = create_model(backbone, 64).eval()
        device = torch.device("cpu")
        prec = resolve_precision(device, precision)
        chosen = resolve_runtime(runtime, device, precision)

        # baseline: PIL per file + timm's eval transform, fp32, NCHW, batch 32
        cfg = timm.data.resolve_data_config({"input_size": (3, image_size, image_size)}, model=model)
        tf = timm.data.create_transform(**cfg)
        _spread_head(model, torch.stack([tf(Image.open(f).convert("RGB")) for f in files[:32]]))

        @torch.inference_mode()
        def baseline():
            for i in range(0, len(files), 32):
                x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[i:i + 32]])
                torch.sigmoid(model(x))

        d = data_config(model, image_size)
        ds = ProductImages(lake, [p["image_shard"] for p in products], [p["image_hash"] for p in products],
                           create_transforms(image_size, train=False))
        norm = BatchNormalize.from_config(d, reuse=True)
        out: dict[str, np.ndarray] = {}

        def ours():
            out["ours"] = predict_with_runtime(model, create_loader(ds, batch, workers), device,
                                               runtime=runtime, precision=precision, desc="ours",
                                               normalize=norm)

        def torch_path():
            out["torch"] = predict_scores(model, create_loader(ds, batch, workers), device,
                                          precision=prec, desc="torch", normalize=norm)

        x = torch.randn(batch, 3, image_size, image_size)
        xc = x.contiguous(memory_format=torch.channels_last)

        @torch.inference_mode()
        def torch_limit():
            m = model.to(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                for _ in range(0, len(files), batch):
                    torch.sigmoid(m(xc))

        export_s = None
        if chosen == "onnx":
            t0 = time.perf_counter()
            session = onnx_session(model, (3, image_size, image_size))  # export (or cache) + session
            export_s = round(time.perf_counter() - t0, 1)
            xn = x.numpy()
            session.run(None, {"images": xn})  # warm-up

            def limit():
                for _ in range(0, len(files), batch):
                    torch.sigmoid(torch.from_numpy(session.run(None, {"images": xn})[0]))
        else:
            limit = torch_limit

        paths = {"baseline": (baseline, len(files)), "ours": (ours, len(products)),
                 "limit": (limit, len(files)), "torch_path": (torch_path, len(products)),
                 "torch_limit": (torch_limit, len(files))}
        for fn, _ in paths.values():  # warm-up: allocator, oneDNN primitives, our shard cache
            model.to(memory_format=torch.contiguous_format)
            fn()
        runs: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(repeats):  # interleaved rounds: a slow spell of the machine hits all paths
            for name, (fn, n_images) in paths.items():
                model.to(memory_format=torch.contiguous_format)
                runs[name].append(_rate(fn, n_images))
        ref = out["torch"] if prec == "fp32" else predict_scores(
            model, create_loader(ds, batch, workers), device, precision="fp32", desc="fp32",
            normalize=norm)
    rates = {k: float(np.median(v)) for k, v in runs.items()}
    paired = {  # per-round ratios, then their median: robust to drift between rounds
        "speedup": np.median([o / b for o, b in zip(runs["ours"], runs["baseline"])]),
        "of_limit": np.median([o / m for o, m in zip(runs["ours"], runs["limit"])]),
    }
    return dict(backbone=backbone, image_size=image_size, images=len(files), batch=batch,
                workers=workers, runtime=chosen, precision="fp32" if chosen == "onnx" else prec,
                threads=torch.get_num_threads(), onnx_export_s=export_s, repeats=repeats,
                **{k: round(v, 1) for k, v in rates.items()},
                rounds={k: [round(r, 1) for r in v] for k, v in runs.items()},
                speedup=round(float(paired["speedup"]), 2), of_limit=round(float(paired["of_limit"]), 2),
                vs_torch_fp32={k: round(v, 7) for k, v in agreement(ref, out["ours"]).items()},
                weights="random init, head redrawn so logits have std 3 per output")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_b0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="ours: auto (what TagConfig.runtime=auto picks here), torch or onnx")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved rounds of all paths after a warm-up of each; medians reported")
    a = p.parse_args()
    r = run(a.backbone, a.image_size, a.images, a.batch, a.workers, a.precision, a.runtime, a.repeats)
    print(json.dumps(r, indent=2))
    runtime = "ONNX Runtime" if r["runtime"] == "onnx" else "torch"
    v = r["vs_torch_fp32"]
    print(f"| {time.strftime('%Y-%m-%d')}, {platform.machine()}, {r['threads']} threads | {r['backbone']} "
          f"@ {r['image_size']} px, {r['images']} images, {r['precision']} {runtime} | {r['baseline']} | "
          f"{r['ours']} | {r['speedup']}x | {r['limit']} | {r['of_limit']} |")
    print(f"vs torch fp32 on the same images ({r['weights']}): max |score diff| {v['max_abs_diff']:.1e}, "
          f"decisions agree {v['agree_at_0_5']:.2%} at 0.5 and {v['agree_at_percentile_thresholds']:.2%} "
          f"at per-output percentile thresholds; torch path {r['torch_path']} img/s, torch limit "
          f"{r['torch_limit']} img/s")


if __name__ == "__main__":
    main()
