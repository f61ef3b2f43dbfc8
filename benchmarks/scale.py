"""Scale: wall time and peak memory of the nightly commands, as a user runs them, on generated
catalogs of 100,000 and 1,000,000 products (or the sizes asked for), against the goals.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.scale --sizes 100000,1000000

Per catalog size N, each step one whole command in a fresh process (`python -m tagger.cli`,
what the `tagger` script runs):

1. `tagger ingest` of a generated export of N demo products (CSV; one tiny JPEG file per
   product, see make_catalog) into a fresh lake: the first night;
2. a model of random weights (`test_efficientnet` @ 48 px, as benchmarks/nightly_incremental.py
   registers: speed and memory do not depend on the weights), the same version in every lake;
3. `tagger tag --full`;
4. 1% of the image files rewritten with new bytes, and `tagger ingest` again (it reads only
   those images: the others' size and mtime are unchanged);
5. `tagger tag`: incremental, it must tag exactly the changed products.

Wall time and peak RSS of each command (GNU /usr/bin/time's maximum resident set size; with
`--workers 0` tag scores in its own process, nothing escapes into loader workers). Start-up:
the same commands on a 1-product lake (imports, model, runtime: what no catalog size
changes), and `tagger --help` (the CLI's imports alone). The ONNX export of the model is made
once, into this run's own cache, before anything is measured (once per model and machine,
not a night's cost).

Goals: the largest size's peak over the smallest's <= 1.5 for every step; every step's peak
over its start-up <= 500 MB; the incremental night (steps 4 + 5) <= 5% of the full night
(steps 1 + 3) at the largest size. Prints one Markdown table and writes JSON (`--json`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TAGGER = [sys.executable, "-m", "tagger.cli"]
TIME = "/usr/bin/time"  # GNU time (Debian: apt-get install time)
STEPS = ("ingest", "tag_full", "reingest", "tag_incremental")
STARTUP_OF = {"ingest": "ingest", "tag_full": "tag", "reingest": "ingest", "tag_incremental": "tag"}
CHANGED_FRACTION = 0.01
GOALS = dict(peak_ratio=1.5, peak_over_startup_mb=500.0, night_ratio=0.05)


# --- the catalog -------------------------------------------------------------------------


def make_catalog(out: Path, n: int, *, side: int = 24, pool: int = 64, seed: int = 0) -> Path:
    """catalog.csv of n demo products, each with its own image file: one of `pool` drawn
    JPEGs of side x side px with the product id appended after the JPEG's end marker, so
    every file is distinct content (ingest stores and tag scores one image per product)
    while decoding like its pool image; drawing a million images would take an hour.
    Streamed to disk: neither the rows nor the images are held."""
    import io

    import numpy as np

    from tagger.demo.sample import COLUMNS, UNKNOWN_RATE, _row, _sample_product, _title, _write, render_product

    rng = np.random.default_rng(seed)
    titles = np.random.default_rng([seed, 1])  # the demo's titles, from their own generator
    (out / "images").mkdir(parents=True, exist_ok=True)
    drawn = []
    for _ in range(min(pool, n)):
        p = _sample_product(rng)
        buf = io.BytesIO()
        render_product(p, rng, side).save(buf, "JPEG", quality=90)
        drawn.append((p, buf.getvalue(), _title(p, titles)))
    picks, hides = rng.integers(len(drawn), size=n), rng.random((n, len(UNKNOWN_RATE)))

    def rows():
        for i in range(n):
            pid = f"P{i + 1:07d}"
            p, data, title = drawn[picks[i]]
            (out / "images" / f"{pid}.jpg").write_bytes(data + pid.encode())
            hide = {a: bool(d < r) for (a, r), d in zip(UNKNOWN_RATE.items(), hides[i])}
            yield _row(pid, p, hide, title)

    _write(rows(), out / "catalog.csv", "csv", COLUMNS)  # one image per product: the demo's columns
    return out / "catalog.csv"


def change_images(catalog: Path, fraction: float, *, seed: int = 1) -> list[str]:
    """Rewrite `fraction` of the products' image files with new bytes (same file, same
    decoded picture: another trailer). Returns the changed product ids."""
    import numpy as np

    with catalog.open(encoding="utf-8", newline="") as f:
        ids = [r[0] for r in csv.reader(f)][1:]
    rng = np.random.default_rng(seed)
    k = max(1, round(len(ids) * fraction))
    changed = sorted(ids[i] for i in rng.choice(len(ids), size=k, replace=False))
    for pid in changed:
        path = catalog.parent / "images" / f"{pid}.jpg"
        data = path.read_bytes()
        path.write_bytes(data[:len(data) - len(pid)] + f"{pid}-v2".encode())
    return changed


# --- one command -------------------------------------------------------------------------


def run_command(args: list[str], log: Path, env: dict) -> dict:
    """One whole command: wall seconds, peak RSS (MB) and its JSON summary (stdout).

    The peak is /usr/bin/time's (the command's own ru_maxrss, from wait4). Not this process's
    wait4 of its own child: Linux counts the pages a child shared with its parent until exec
    in the child's high-water mark, so every command would read at least this process's RSS
    (about 700 MB once it has imported torch to register the model)."""
    out, err, peak = log.with_suffix(".out"), log.with_suffix(".err"), log.with_suffix(".rss")
    t0 = time.perf_counter()
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.run([TIME, "-f", "%M", "-o", str(peak), *TAGGER, *args], stdout=o, stderr=e,
                              env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args[:1])} failed ({proc.returncode}): {err.read_text()[-3000:]}")
    try:
        summary = json.loads(out.read_text())
    except json.JSONDecodeError:
        summary = None
    kib = int(peak.read_text().split()[-1])  # %M: maximum resident set size in KiB
    return dict(seconds=round(seconds, 2), peak_mb=round(kib / 1024, 1), summary=summary)


class Commands:
    """The user's commands against one lake, with the benchmark's fixed flags."""

    def __init__(self, taxonomy: str, env: dict, logs: Path, tag_flags: list[str]):
        self.taxonomy, self.env, self.logs, self.tag_flags = taxonomy, env, logs, tag_flags

    def ingest(self, catalog: Path, lake: Path, name: str) -> dict:
        return run_command(["ingest", str(catalog), "--taxonomy", self.taxonomy, "--lake", str(lake)],
                           self.logs / name, self.env)

    def tag(self, lake: Path, name: str, *, full: bool) -> dict:
        return run_command(["tag", "--lake", str(lake), *(["--full"] if full else []), *self.tag_flags],
                           self.logs / name, self.env)


# --- the benchmark -------------------------------------------------------------------------


def startup(tmp: Path, cmds: Commands, image_size: int) -> tuple[dict, Path]:
    """Peaks of the commands on a 1-product lake, and `tagger --help`; the lake holds the
    model every size's lake gets a copy of (its ONNX export made here, before any timing)."""
    from catalog_schemas.taxonomy import shipped_taxonomy
    from benchmarks.nightly_incremental import register_random_model

    catalog = make_catalog(tmp / "startup" / "export", 1)
    lake = tmp / "startup" / "lake"
    ingest = cmds.ingest(catalog, lake, "startup-ingest")
    register_random_model(str(lake), str(shipped_taxonomy("demo")), "test_efficientnet", image_size)
    cmds.tag(lake, "startup-export", full=True)  # exports the model to ONNX once (cached)
    tag = cmds.tag(lake, "startup-tag", full=True)
    help_ = run_command(["--help"], cmds.logs / "help", cmds.env)
    return dict(ingest_mb=ingest["peak_mb"], tag_mb=tag["peak_mb"], help_mb=help_["peak_mb"],
                help_seconds=help_["seconds"]), lake / "models"


def run_size(tmp: Path, n: int, cmds: Commands, models: Path) -> dict:
    root = tmp / f"n{n}"
    t0 = time.perf_counter()
    catalog = make_catalog(root / "export", n)
    generate_s = time.perf_counter() - t0
    lake = root / "lake"
    steps = {"ingest": cmds.ingest(catalog, lake, f"n{n}-ingest")}
    shutil.copytree(models, lake / "models")
    steps["tag_full"] = cmds.tag(lake, f"n{n}-tag-full", full=True)
    changed = change_images(catalog, CHANGED_FRACTION)
    steps["reingest"] = cmds.ingest(catalog, lake, f"n{n}-reingest")
    steps["tag_incremental"] = cmds.tag(lake, f"n{n}-tag", full=False)
    s = {k: v["summary"] or {} for k, v in steps.items()}
    checks = dict(ingested=s["ingest"].get("products") == n, tagged_all=s["tag_full"].get("tagged") == n,
                  reingest_changed=s["reingest"].get("changed") == len(changed),
                  incremental_tagged_changed=s["tag_incremental"].get("tagged") == len(changed))
    full_night = steps["ingest"]["seconds"] + steps["tag_full"]["seconds"]
    incremental_night = steps["reingest"]["seconds"] + steps["tag_incremental"]["seconds"]
    shutil.rmtree(root)  # a million image files: free the disk before the next size
    return dict(products=n, changed=len(changed), generate_s=round(generate_s, 1), checks=checks,
                steps={k: dict(seconds=v["seconds"], peak_mb=v["peak_mb"]) for k, v in steps.items()},
                full_night_s=round(full_night, 2), incremental_night_s=round(incremental_night, 2),
                night_ratio=round(incremental_night / full_night, 4))


def goals(sizes: list[dict], start: dict) -> dict:
    """Each goal's figure, limit and whether it is met (the ratios need two sizes)."""
    small, big = sizes[0], sizes[-1]
    out = {}
    for step in STEPS:
        over = round(max(s["steps"][step]["peak_mb"] for s in sizes) - start[STARTUP_OF[step] + "_mb"], 1)
        out[f"{step}_peak_over_startup_mb"] = dict(value=over, limit=GOALS["peak_over_startup_mb"],
                                                   met=over <= GOALS["peak_over_startup_mb"])
        if len(sizes) > 1:
            ratio = round(big["steps"][step]["peak_mb"] / small["steps"][step]["peak_mb"], 3)
            out[f"{step}_peak_ratio"] = dict(value=ratio, limit=GOALS["peak_ratio"], met=ratio <= GOALS["peak_ratio"])
    out["night_ratio"] = dict(value=big["night_ratio"], limit=GOALS["night_ratio"],
                              met=big["night_ratio"] <= GOALS["night_ratio"])
    return out


def run(sizes: list[int], *, workdir: Path | None = None, image_size: int = 48,
        tag_flags: list[str] | None = None) -> dict:
    from catalog_schemas.taxonomy import shipped_taxonomy

    tag_flags = ["--workers", "0"] if tag_flags is None else tag_flags
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=workdir) as tmp:
        tmp = Path(tmp)
        (tmp / "logs").mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1",
               "TAGGER_ONNX_CACHE": str(tmp / "onnx")}  # this run's own exports, never the user's cache
        cmds = Commands(str(shipped_taxonomy("demo")), env, tmp / "logs", tag_flags)
        start, models = startup(tmp, cmds, image_size)
        results = [run_size(tmp, n, cmds, models) for n in sorted(sizes)]
    return dict(sizes=results, startup=start, goals=goals(results, start), backbone="test_efficientnet",
                image_size=image_size, tag_flags=tag_flags, threads=os.environ.get("OMP_NUM_THREADS", "default"),
                machine=platform.machine(), cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d"))


def markdown(r: dict) -> list[str]:
    """One table: a row per size and step, then the goals."""
    st = r["startup"]
    lines = [f"start-up (1-product lake): ingest {st['ingest_mb']:.0f} MB, tag {st['tag_mb']:.0f} MB; "
             f"`tagger --help` {st['help_mb']:.0f} MB", "",
             "| products | step | wall s | peak RSS MB | peak over start-up MB |", "|---|---|---|---|---|"]
    for s in r["sizes"]:
        for step in STEPS:
            m = s["steps"][step]
            lines.append(f"| {s['products']:,} | {step} | {m['seconds']:.1f} | {m['peak_mb']:.0f} | "
                         f"{m['peak_mb'] - st[STARTUP_OF[step] + '_mb']:.0f} |")
        lines.append(f"| {s['products']:,} | incremental / full night | {s['incremental_night_s']:.1f} / "
                     f"{s['full_night_s']:.1f} = {100 * s['night_ratio']:.1f}% | | |")
    lines += ["", "| goal | figure | limit | met |", "|---|---|---|---|"]
    lines += [f"| {k} | {g['value']} | {g['limit']} | {'yes' if g['met'] else '**no**'} |" for k, g in r["goals"].items()]
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000", help="catalog sizes, comma-separated")
    p.add_argument("--workdir", type=Path, help="where the catalogs and lakes go (default: the temp folder)")
    p.add_argument("--image-size", type=int, default=48, help="the model's input size")
    p.add_argument("--json", type=Path, help="write the results here")
    a = p.parse_args(argv)
    r = run([int(s) for s in a.sizes.split(",")], workdir=a.workdir, image_size=a.image_size)
    if a.json:
        a.json.write_text(json.dumps(r, indent=2) + "\n")
    sys.stdout.write(json.dumps(r, indent=2) + "\n" + "\n".join(markdown(r)) + "\n")
    return r


if __name__ == "__main__":
    main()
