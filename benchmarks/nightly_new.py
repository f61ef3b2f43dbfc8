"""New products each night, as whole commands: `tagger nightly` and `tagger ingest` +
`tagger tag` against a 20-line timm loop over the same photos, same model, same run.

    .venv/bin/python -m benchmarks.nightly_new --products 600 --sides 800,1500 \\
        --models tf_efficientnet_lite0:96,efficientnet_b4:380:120 --repeats 3

Per photo size (`--sides`) and model (`--models NAME:SIZE[:PRODUCTS]`, random weights: speed
does not depend on them; no test-time augmentation, so both sides run one forward pass):

- the workload: PRODUCTS (default `--products`) new demo products photographed at side x
  side px (benchmarks/catalogs.py: drawn, enlarged, sensor noise, JPEG q90), a lake holding
  only the registered model (a fresh copy before every run: every photo is new each time);
- nightly: `python -m tagger.cli nightly CATALOG --taxonomy ... --lake LAKE`, one process;
- ingest + tag: `tagger ingest`, then `tagger tag`, two processes (timed together); then
  `tagger tag` once more on that lake, with nothing to tag (`tag_empty`: what a command
  costs before it does anything);
- baseline: BASELINE below as its own process: PIL open + convert, timm's eval transform
  (`timm.data.resolve_data_config` + `create_transform`), fp32 torch, batch 32, `no_grad`,
  the same registered weights, scores saved with numpy.

Every command runs as a whole process (Python start, imports, model load included) with
this machine's default threads; the model's ONNX export is made before timing (once per
model and machine, tagger/model/runtime.py), as on every night after the model's first.
Each path runs once to warm up (file cache), then `--repeats` rounds of all paths, the
order rotated each round; rates are medians, and the ratios are medians of the per-round
ratios (a slow spell of the machine hits a whole round). Also reported: CPU seconds per
path, and how far the nightly run's tags are from ingest + tag's (the same products
tagged; max score difference; rows in only one of the two latest tables).
Run it alone: a second busy process ruins timings on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASELINE = '''\
import csv, sys
import numpy as np, timm, timm.data, torch
from PIL import Image
from safetensors.torch import load_file

catalog, weights, timm_name, outputs, size, out = sys.argv[1:7]
model = timm.create_model(timm_name, num_classes=int(outputs))
model.load_state_dict(load_file(weights))
model.eval()
config = timm.data.resolve_data_config({"input_size": (3, int(size), int(size))}, model=model)
transform = timm.data.create_transform(**config)
folder = catalog.rsplit("/", 1)[0]
with open(catalog, newline="") as f:
    paths = [f"{folder}/{row['image']}" for row in csv.DictReader(f)]
scores = []
with torch.no_grad():
    for i in range(0, len(paths), 32):
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i:i + 32]])
        scores.append(torch.sigmoid(model(x)).numpy())
np.save(out, np.concatenate(scores))
'''
PATHS = ("nightly", "ingest_tag", "baseline")


def _model_specs(text: str, products: int) -> list[tuple[str, int, int]]:
    specs = []
    for part in text.split(","):
        name, size, *n = part.strip().split(":")
        specs.append((name, int(size), int(n[0]) if n else products))
    return specs


def _run(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall, CPU seconds) of one command as a whole process; its failure is an error."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _prepare(tmp: Path, backbone: str, size: int, taxonomy: str, env: dict) -> tuple[Path, dict]:
    """A lake template holding a random-weight model, its ONNX export made now (cached)."""
    from benchmarks.nightly_incremental import register_random_model
    from tagger.config import TagConfig
    from tagger.io.storage import open_storage
    from tagger.lake import WEIGHTS, model_path
    from tagger.model.runtime import card_session
    from tagger.model.scoring import ImageScorer

    template = tmp / f"template-{backbone}-{size}"
    version = register_random_model(str(template), taxonomy, backbone, size)
    scorer = ImageScorer.of_version(open_storage(str(template)), version, TagConfig())
    os.environ["TAGGER_ONNX_CACHE"] = env["TAGGER_ONNX_CACHE"]
    card_session(scorer.card, (3, size, size), lambda: scorer.model)
    card = scorer.card
    return template, dict(version=version, weights=str(template / model_path(version, WEIGHTS)),
                          timm_name=card.timm_name, outputs=card.taxonomy.num_outputs)


def _fresh(template: Path, lake: Path) -> str:
    shutil.rmtree(lake, ignore_errors=True)
    shutil.copytree(template, lake)
    return str(lake)


def _compare_tags(a: str, b: str) -> dict:
    """How far two lakes' latest tag tables are apart."""
    import pyarrow.parquet as pq

    def rows(lake):
        t = pq.read_table(f"{lake}/tags/latest/tags.parquet").to_pylist()
        return {(r["product_id"], r["attribute"], r["value"], r["source"]): r["score"] for r in t}

    ra, rb = rows(a), rows(b)
    common = [k for k in ra if k in rb and ra[k] is not None and rb[k] is not None]
    return dict(rows=len(ra), rows_other=len(rb), only_in_one=len(set(ra) ^ set(rb)),
                max_score_diff=max((abs(ra[k] - rb[k]) for k in common), default=0.0))


def measure(side: int, backbone: str, size: int, n: int, repeats: int, tmp: Path, env: dict,
            made: dict) -> dict:
    from benchmarks.catalogs import large_catalog

    if (side, n) not in made:  # a catalog per photo size and count, a model per backbone
        made[side, n] = large_catalog(tmp / f"catalog-{side}-{n}", n, side)[:2]
    catalog, taxonomy = made[side, n]
    if (backbone, size) not in made:
        made[backbone, size] = _prepare(tmp, backbone, size, taxonomy, env)
    template, model = made[backbone, size]
    baseline_py = tmp / "baseline.py"
    baseline_py.write_text(BASELINE)
    py, lake, other = sys.executable, tmp / "lake", tmp / "lake-two-step"
    cli = [py, "-m", "tagger.cli"]
    rounds: dict[str, list[tuple[float, float]]] = {p: [] for p in (*PATHS, "tag_empty")}

    def nightly():
        return _run([*cli, "nightly", str(catalog), "--taxonomy", taxonomy, "--lake", _fresh(template, lake)], env)

    def ingest_tag():
        lk = _fresh(template, other)
        w1, c1 = _run([*cli, "ingest", str(catalog), "--taxonomy", taxonomy, "--lake", lk], env)
        w2, c2 = _run([*cli, "tag", "--lake", lk], env)
        rounds["tag_empty"].append(_run([*cli, "tag", "--lake", lk], env))
        return w1 + w2, c1 + c2

    def baseline():
        return _run([py, str(baseline_py), str(catalog), model["weights"], model["timm_name"],
                     str(model["outputs"]), str(size), str(tmp / "baseline-scores.npy")], env)

    fns = {"nightly": nightly, "ingest_tag": ingest_tag, "baseline": baseline}
    for fn in fns.values():  # warm-up: the photos into the file cache, first imports
        fn()
    rounds["tag_empty"].clear()
    for r in range(repeats):
        order = PATHS[r % len(PATHS):] + PATHS[:r % len(PATHS)]
        for name in order:
            rounds[name].append(fns[name]())

    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    rate = {p: round(n / med([w for w, _ in rounds[p]]), 1) for p in PATHS}
    ratio = {p: round(med([b[0] / o[0] for o, b in zip(rounds[p], rounds["baseline"])]), 2)
             for p in ("nightly", "ingest_tag")}
    return dict(side=side, backbone=backbone, image_size=size, products=n, repeats=repeats,
                img_s=rate, vs_baseline=ratio,
                wall_s={p: [round(w, 2) for w, _ in v] for p, v in rounds.items()},
                cpu_s={p: round(med([c for _, c in v]), 2) for p, v in rounds.items() if v},
                tag_empty_s=round(med([w for w, _ in rounds["tag_empty"]]), 2),
                nightly_vs_ingest_tag=_compare_tags(str(lake), str(other)))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--products", type=int, default=600)
    p.add_argument("--sides", default="800,1500", help="photo sizes in px, comma-separated")
    p.add_argument("--models", default="tf_efficientnet_lite0:96,efficientnet_b4:380",
                   help="NAME:SIZE[:PRODUCTS],... (backbones of tagger/backbones.py)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-nightly-new-") as tmp:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "TAGGER_ONNX_CACHE": str(Path(tmp) / "onnx"), "TQDM_DISABLE": "1"}
        made: dict = {}
        for side in (int(s) for s in a.sides.split(",")):
            for backbone, size, n in _model_specs(a.models, a.products):
                results.append(measure(side, backbone, size, n, a.repeats, Path(tmp), env, made))
    out = dict(machine=f"{platform.machine()}, {os.cpu_count()} CPUs", results=results)
    print(json.dumps(out, indent=2))
    for r in results:
        c = r["nightly_vs_ingest_tag"]
        print(f"| {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs | {r['products']} photos of "
              f"{r['side']} px, {r['backbone']} @ {r['image_size']} | {r['img_s']['baseline']} | "
              f"{r['img_s']['ingest_tag']} ({r['vs_baseline']['ingest_tag']}x) | "
              f"{r['img_s']['nightly']} (**{r['vs_baseline']['nightly']}x**) | {r['tag_empty_s']} s | "
              f"{c['max_score_diff']:.1e}, {c['only_in_one']} of {c['rows']} rows |")
    return out


if __name__ == "__main__":
    main()
