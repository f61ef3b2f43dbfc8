"""Incremental nightly run: cost of a night where 1% of the products changed, against a full
run of the same catalog, and peak memory of tag runs at catalog sizes 10x apart.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.nightly_incremental --products 2000 20000

Per catalog size N, in one run of this script:

1. a generated demo catalog of N products (CSV) whose images come from a pool of
   `--pool` distinct drawn images (cheap to generate; ingest stores each distinct image
   once). Tagging still costs per product: `score_products` decodes, transforms and
   scores one image per product, shared or not;
2. ingest into a fresh lake (timed: the first night's ingest), and a model of random
   weights registered for `test_efficientnet` @ `--image-size` px (speed and memory do not
   depend on the weights; thresholds 0.5);
3. a full tag run (`tag_catalog(full=True)`) in a fresh subprocess: wall and CPU seconds,
   products tagged, peak RSS of the tag run;
4. 1% of the products changed in the export (half: another colour label; half: a new,
   distinct image), re-ingested (timed), then the incremental tag run in a fresh
   subprocess: the same figures; it must tag exactly the changed products.

Peak RSS is the high-water mark of the tag run alone: the child imports torch and loads
the model first, then resets VmHWM (/proc/self/clear_refs) and reads it after the run
(ru_maxrss where /proc is missing). `--chunk-size` (TagConfig.chunk_size) and
`--latest-batch-rows` (tagger.tag.streams.BATCH_ROWS) are below the smallest catalog, so
every size is scored, read and merged in pieces and the bounded part is the same at both sizes;
what grows with N is what a run holds per product. `--trace` adds one more child per size
(a full run under tracemalloc, not timed) with the Python heap peak and its sites.

Loader workers are 0 (everything in the measured process); torch uses one thread unless
OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHANGED_FRACTION = 0.01


# --- the catalog -------------------------------------------------------------------------


def make_catalog(out_dir: Path, n: int, *, pool: int, image_size: int, seed: int = 0) -> Path:
    """catalog.csv of n products over `pool` distinct images (images/pool-K.jpg); each
    product carries the labels of its image (some hidden, as in the demo catalog)."""
    import numpy as np

    from tagger.demo.sample import UNKNOWN_RATE, _row, _sample_product, _title, render_product

    rng = np.random.default_rng(seed)
    titles = np.random.default_rng([seed, 1])  # the demo's titles, from their own generator
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    drawn = []
    for k in range(min(pool, n)):
        p = _sample_product(rng)
        render_product(p, rng, image_size).save(out_dir / "images" / f"pool-{k}.jpg", quality=90)
        drawn.append((p, _title(p, titles)))
    rows = []
    for i in range(n):
        k = int(rng.integers(len(drawn)))
        hide = {a: bool(d < r) for (a, r), d in zip(UNKNOWN_RATE.items(), rng.random(len(UNKNOWN_RATE)))}
        rows.append({**_row(f"P{i + 1:07d}", drawn[k][0], hide, drawn[k][1]), "image": f"images/pool-{k}.jpg"})
    return _write_rows(out_dir, rows)


def _write_rows(out_dir: Path, rows: list[dict]) -> Path:
    from tagger.demo.sample import _write

    path = out_dir / "catalog.csv"
    _write(rows, path, "csv")
    return path


def _read_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # back to _row's form: None = unknown, features a list
        for k, v in r.items():
            r[k] = None if v == "" else v
        f = r["features"]
        r["features"] = None if f is None else ([] if f == "-" else f.split("|"))
    return rows


def change_catalog(catalog: Path, fraction: float, *, image_size: int, seed: int = 1) -> list[str]:
    """Change `fraction` of the products in place: the first half of them get another
    colour label, the second half a new distinct image. Returns the changed product ids."""
    import numpy as np

    from tagger.demo.sample import COLOURS, _sample_product, render_product

    rng = np.random.default_rng(seed)
    rows = _read_rows(catalog)
    k = max(2, round(len(rows) * fraction))
    picked = sorted(rng.choice(len(rows), size=k, replace=False).tolist())
    for j, i in enumerate(picked):
        r = rows[i]
        if j < k // 2:
            r["colour"] = next(c for c in COLOURS if c != r["colour"])
        else:
            name = f"images/new-{r['id']}.jpg"
            render_product(_sample_product(rng), rng, image_size).save(catalog.parent / name, quality=90)
            r["image"] = name
    _write_rows(catalog.parent, rows)
    return sorted(rows[i]["id"] for i in picked)


def register_random_model(lake: str, taxonomy_path: str, backbone: str, image_size: int) -> str:
    """A registered model version with random weights and thresholds of 0.5 (speed only:
    its card says it was never trained)."""
    from datetime import datetime, timezone

    import timm
    import torch

    from catalog_schemas.card import ModelCard
    from catalog_schemas.taxonomy import load_taxonomy
    from tagger.io.storage import open_storage
    from tagger.backbones import get_backbone
    from tagger.model.factory import create_model, data_config
    from tagger.model.versions import new_version, register_model

    taxonomy = load_taxonomy(taxonomy_path)
    model = create_model(backbone, taxonomy.num_outputs, pretrained=False)
    thresholds: dict[str, dict[str, float]] = {}
    for a, v in taxonomy.outputs:
        thresholds.setdefault(a, {})[v] = 0.5
    card = ModelCard(
        version=new_version(), created_at=datetime.now(timezone.utc).isoformat(), backbone=backbone,
        timm_name=get_backbone(backbone).timm_name, image_size=image_size,
        data_config=data_config(model, image_size), taxonomy=taxonomy, thresholds=thresholds,
        metrics={}, config={}, data=dict(snapshot="untrained", products=0, train=0, validation=0, lake=lake),
        training=dict(device="none", world_size=1, seconds=0.0, torch=torch.__version__,
                      timm=timm.__version__),
    )
    return register_model(open_storage(lake), model, card).version


# --- one tag run in a fresh process --------------------------------------------------------


def _rss_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _export_once(model, card: dict, config) -> str:
    """The runtime the tag run will use; for ONNX Runtime, the model exported into the
    machine's cache now (tagger.runtime exports once per model content), so the timed run
    opens the cached export like every night after the model's first."""
    import torch

    from tagger.model.runtime import ExportError, export_onnx, resolve_runtime

    runtime = resolve_runtime(config.runtime, torch.device("cpu"), config.precision)
    if runtime == "onnx":
        size = card.data_config.image_size
        try:
            export_onnx(model, (3, size, size))
        except ExportError:
            return "torch (export failed)"
    return runtime


def child(lake: str, mode: str, chunk_size: int, batch_size: int, latest_batch_rows: int,
          runtime: str = "auto", gc_freeze: bool = False) -> dict:
    """One tag run (full or incremental) in this process; its seconds, counts and peak RSS."""
    import torch  # noqa: F401  (imported before the baseline is taken)

    import tagger.tag.streams
    from tagger.config import TagConfig
    from tagger.model.versions import load_model
    from tagger.io.storage import open_storage
    from tagger.tag.run import tag_catalog

    config = TagConfig(chunk_size=chunk_size, batch_size=batch_size, workers=0, device="cpu",
                       runtime=runtime)
    tagger.tag.streams.BATCH_ROWS = latest_batch_rows
    model, card = load_model(open_storage(lake))  # code paths and allocator warm before the baseline
    used = _export_once(model, card, config)  # once per model version and machine: not a night's cost
    if gc_freeze:  # what is imported and loaded so far is never scanned by the cyclic GC again
        import gc

        gc.freeze()
    reset = _reset_peak()
    before = _rss_mb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    result = tag_catalog(lake, full=mode == "full", run_id=f"bench-{mode}", config=config)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    out = dict(mode=mode, runtime=used, gc_freeze=gc_freeze, seconds=round(seconds, 3), cpu_seconds=round(cpu_seconds, 3),
               products=result.products,
               tagged=result.tagged, history_rows=result.history_rows,
               latest_rows=result.latest_rows, rss_before_mb=round(before or 0, 1))
    peak = _rss_mb("VmHWM") if reset else None
    if peak is None:  # no /proc: the process's lifetime peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(peak_rss_mb=round(peak, 1), peak_over_before_mb=round(peak - (before or 0), 1))
    return out


def _traced_peak_sites(lake: str, mode: str, chunk_size: int, batch_size: int, latest_batch_rows: int,
                       top: int = 8) -> dict:
    """The Python heap peak of a tag run (tracemalloc, started after imports and a model
    load) and what the heap holds when the run compares the tags (compute_tag_changes:
    products, state and the merged latest table are all alive there)."""
    import tracemalloc

    import torch  # noqa: F401

    import tagger.tag.run as tags_module
    import tagger.tag.streams
    from tagger.config import TagConfig
    from tagger.model.versions import load_model
    from tagger.io.storage import open_storage

    tagger.tag.streams.BATCH_ROWS = latest_batch_rows
    load_model(open_storage(lake))
    snapshots, original = [], tags_module.compute_tag_changes

    def snap_then(*a, **k):
        snapshots.append(tracemalloc.take_snapshot())
        return original(*a, **k)

    tags_module.compute_tag_changes = snap_then
    tracemalloc.start(1)
    tags_module.tag_catalog(lake, full=mode == "full", run_id=f"bench-{mode}-trace",
                            config=TagConfig(chunk_size=chunk_size, batch_size=batch_size, workers=0,
                                             device="cpu"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    tags_module.compute_tag_changes = original
    stats = snapshots[0].statistics("lineno") if snapshots else []
    return dict(py_peak_mb=round(peak / 2**20, 2),
                at_changes_mb=round(sum(s.size for s in stats) / 2**20, 2),
                at_changes_top=[f"{s.size / 2**20:.2f} MB {s.traceback[0].filename.rsplit('/', 2)[-1]}:"
                                f"{s.traceback[0].lineno}" for s in stats[:top]])


def _run_child(lake: str, mode: str, knobs: dict, trace: bool = False) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.nightly_incremental", "--child", mode, "--lake", lake,
           "--chunk-size", str(knobs["chunk_size"]), "--batch-size", str(knobs["batch_size"]),
           "--latest-batch-rows", str(knobs["latest_batch_rows"]), "--runtime", knobs["runtime"]] + (
               ["--trace-sites"] if trace else []) + (["--gc-freeze"] if knobs["gc_freeze"] else [])
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "TQDM_DISABLE": "1"},
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"child {mode} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the benchmark -------------------------------------------------------------------------


def run_size(tmp: Path, n: int, *, pool: int, image_size: int, knobs: dict, trace: bool = False) -> dict:
    from catalog_schemas.taxonomy import shipped_taxonomy
    from tagger.config import IngestConfig
    from tagger.ingest.run import ingest_catalog

    taxonomy = str(shipped_taxonomy("demo"))
    root = tmp / f"n{n}"
    catalog = make_catalog(root / "export", n, pool=pool, image_size=64)
    lake = str(root / "lake")
    icfg = IngestConfig(workers=2)
    t0 = time.perf_counter()
    first = ingest_catalog(str(catalog), taxonomy, lake, icfg)
    ingest_first = time.perf_counter() - t0
    assert first.products == n, first.to_dict()
    register_random_model(lake, taxonomy, "test_efficientnet", image_size)

    full = _run_child(lake, "full", knobs)
    changed = change_catalog(catalog, CHANGED_FRACTION, image_size=64)
    t0 = time.perf_counter()
    again = ingest_catalog(str(catalog), taxonomy, lake, icfg)
    ingest_again = time.perf_counter() - t0
    assert again.changed == len(changed), (again.to_dict(), len(changed))
    incremental = _run_child(lake, "incremental", knobs)
    out = dict(products=n, distinct_images=first.images_stored, changed=len(changed),
               ingest_first_s=round(ingest_first, 3), ingest_again_s=round(ingest_again, 3),
               full=full, incremental=incremental,
               tag_ratio=round(incremental["seconds"] / full["seconds"], 4),
               tag_ratio_cpu=round(incremental["cpu_seconds"] / full["cpu_seconds"], 4),
               nightly_full_s=round(ingest_first + full["seconds"], 3),
               nightly_incremental_s=round(ingest_again + incremental["seconds"], 3))
    out["nightly_ratio"] = round(out["nightly_incremental_s"] / out["nightly_full_s"], 4)
    out["incremental_tagged_exactly_changed"] = incremental["tagged"] == len(changed)
    if trace:  # after the timed runs (the second incremental run finds nothing to tag)
        out["trace_full"] = _run_child(lake, "full", knobs, trace=True)
    return out


def run(sizes: list[int], *, pool: int = 200, image_size: int = 48, chunk_size: int = 500,
        batch_size: int = 64, latest_batch_rows: int = 2048, runtime: str = "auto",
        gc_freeze: bool = False, trace: bool = False) -> dict:
    knobs = dict(chunk_size=chunk_size, batch_size=batch_size, latest_batch_rows=latest_batch_rows,
                 runtime=runtime, gc_freeze=gc_freeze)
    with tempfile.TemporaryDirectory(prefix="bench-nightly-") as tmp:
        results = [run_size(Path(tmp), n, pool=pool, image_size=image_size, knobs=knobs, trace=trace)
                   for n in sorted(sizes)]
    out = dict(sizes=results, backbone="test_efficientnet", image_size=image_size, pool=pool, **knobs,
               threads=os.environ.get("OMP_NUM_THREADS", "default"), machine=platform.machine(),
               cpus=os.cpu_count())
    if len(results) >= 2:
        small, big = results[0], results[-1]
        growth = {}
        for mode in ("full", "incremental"):
            a, b = small[mode]["peak_over_before_mb"], big[mode]["peak_over_before_mb"]
            growth[mode] = dict(size_factor=round(big["products"] / small["products"], 1),
                                peak_small_mb=a, peak_big_mb=b, growth_mb=round(b - a, 1),
                                bytes_per_added_product=round((b - a) * 2**20 / (big["products"] - small["products"])))
        out["memory_growth"] = growth
    return out


def _markdown(r: dict) -> list[str]:
    """One row per catalog size for the table in benchmarks/README.md."""
    rows = []
    for s in r["sizes"]:
        f, i = s["full"], s["incremental"]
        rows.append(
            f"| {time.strftime('%Y-%m-%d')}, {r['cpus']} CPU cores | "
            f"{s['products']:,} products ({s['distinct_images']} distinct images), {s['changed']} changed, "
            f"{i['runtime']}{', gc.freeze()' if i['gc_freeze'] else ''} | "
            f"{f['seconds']:.2f} s ({f['cpu_seconds']:.2f} CPU s), {f['tagged']:,} tagged | "
            f"{i['seconds']:.2f} s ({i['cpu_seconds']:.2f} CPU s), {i['tagged']:,} tagged | "
            f"**{100 * s['tag_ratio']:.1f}%** ({100 * s['tag_ratio_cpu']:.1f}% CPU) | "
            f"{s['nightly_full_s']:.1f} s / {s['nightly_incremental_s']:.1f} s = {100 * s['nightly_ratio']:.1f}% | "
            f"{f['peak_over_before_mb']:.0f} MB / {i['peak_over_before_mb']:.0f} MB |")
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--products", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--pool", type=int, default=200, help="distinct images the products share")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--chunk-size", type=int, default=500, help="TagConfig.chunk_size")
    p.add_argument("--batch-size", type=int, default=64, help="TagConfig.batch_size")
    p.add_argument("--latest-batch-rows", type=int, default=2048,
                   help="tagger.tag.streams.BATCH_ROWS: rows of the products, state and latest "
                   "tables read (and latest rows merged) at once")
    p.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"], help="TagConfig.runtime")
    p.add_argument("--gc-freeze", action="store_true",
                   help="gc.freeze() in each tag process after imports and the model load")
    p.add_argument("--trace", action="store_true", help="also trace Python allocations (extra runs)")
    p.add_argument("--child", choices=["full", "incremental"], help=argparse.SUPPRESS)
    p.add_argument("--lake", help=argparse.SUPPRESS)
    p.add_argument("--trace-sites", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        if a.trace_sites:
            r = _traced_peak_sites(a.lake, a.child, a.chunk_size, a.batch_size, a.latest_batch_rows)
        else:
            r = child(a.lake, a.child, a.chunk_size, a.batch_size, a.latest_batch_rows, a.runtime,
                      a.gc_freeze)
        print(json.dumps(r))
        return r
    r = run(a.products, pool=a.pool, image_size=a.image_size, chunk_size=a.chunk_size,
            batch_size=a.batch_size, latest_batch_rows=a.latest_batch_rows, runtime=a.runtime,
            gc_freeze=a.gc_freeze, trace=a.trace)
    print(json.dumps(r, indent=2))
    for line in _markdown(r):
        print(line)
    return r


if __name__ == "__main__":
    main()
