"""The speed benchmarks run end to end on a few tiny images, so the scripts cannot rot.

Nothing here asserts a speed: only that every figure the README quotes is produced and
positive, and that the Markdown rows render. The real catalog is left out (real_images=0):
its path is the same code on other files.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import ingest_decode, tag_throughput, train_loader

ROOT = Path(__file__).resolve().parents[1]


def test_train_loader_benchmark_runs(capsys):
    r = train_loader.main(["--images", "6", "--side", "160", "--image-size", "48", "--batch", "4",
                           "--real-images", "0"])
    m = r["generated"]
    assert r["real"] is None and m["images"] == 6 and m["source_px"] == [160, 160]
    for key in ("ours_img_s", "baseline_img_s", "ratio", "ours_img_cpu_s", "baseline_img_cpu_s", "ratio_cpu",
                "ours_decode_ms", "baseline_decode_ms",
                "ours_transform_ms", "baseline_transform_ms"):
        assert m[key] > 0, key
    assert math.isclose(m["ratio"], m["ours_img_s"] / m["baseline_img_s"], rel_tol=0.02)
    for target, need in m["workers_needed"].items():  # ceil(target / CPU rate), from unrounded rates
        for side in ("ours", "baseline"):
            expected = math.ceil(train_loader.TARGETS[target] / m[f"{side}_img_cpu_s"])
            assert need[side] >= 1 and abs(need[side] - expected) <= 1, (target, side)
    out = capsys.readouterr().out
    assert out.count("\n| ") == 1 and "generated: 6 JPEGs of 160x160 px @ 48 px" in out


def test_ingest_decode_benchmark_runs(capsys):
    # Stored at 380 px (IngestConfig's default): 1100 px drafts to 1/2 (550 >= 380, 1/4 = 275
    # is not), 600 px not at all (300 < 380).
    r = ingest_decode.main(["--images", "3", "--sides", "1100,600", "--real-images", "0"])
    big, small = r["catalogs"]["generated_1100"], r["catalogs"]["generated_600"]
    assert big["draft_decode_px"] == [550, 550] and big["stored_px"] == [380, 380]
    assert small["draft_decode_px"] == [600, 600] and small["stored_px"] == [380, 380]
    for m in (big, small):
        for key in ("plain_decode_ms", "ours_decode_ms", "plain_step_ms", "ours_step_ms",
                    "ours_ingest_img_s", "plain_ingest_img_s", "ours_ingest_img_cpu_s", "plain_ingest_img_cpu_s",
                    "decode_ratio", "step_ratio", "ingest_ratio", "ingest_ratio_cpu"):
            assert m[key] > 0, key
    out = capsys.readouterr().out
    assert out.count("\n| ") == 2


def test_plain_path_matches_ours_in_size():
    """The baseline does the same job: same stored size, an RGB JPEG."""
    import io

    from PIL import Image

    from tagger.data.images import normalise_image

    buf = io.BytesIO()
    Image.new("RGB", (1200, 800), (200, 30, 30)).save(buf, "JPEG")
    ours, plain = normalise_image(buf.getvalue(), max_side=512), ingest_decode.plain_normalise(
        buf.getvalue(), max_side=512)
    assert ours[1:] == plain[1:] == (512, 341)
    assert Image.open(io.BytesIO(plain[0])).mode == "RGB"


def test_tag_throughput_benchmark_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGGER_ONNX_CACHE", str(tmp_path / "onnx"))
    r = tag_throughput.run("test_efficientnet", 48, 12, 4, 0, "auto", "auto", repeats=2)
    assert r["images"] == 12 and r["repeats"] == 2
    for key in ("baseline", "ours", "limit", "torch_path", "torch_limit"):
        assert r[key] > 0 and len(r["rounds"][key]) == 2, key
    assert r["speedup"] > 0 and r["of_limit"] > 0
    agree = r["vs_torch_fp32"]  # ours is ONNX Runtime or torch fp32: the same scores up to rounding
    assert agree["max_abs_diff"] < 1e-3 and agree["agree_at_0_5"] >= 0.99


def test_train_input_benchmark_runs(capsys):
    from benchmarks import train_input

    # one stream: a window of 2 shards + the next fit in the 4-shard cache; the large lake is 3x it
    r = train_input.main(["--per-shard", "4", "--side", "24", "--cache-shards", "4", "--factor", "3",
                          "--image-size", "32", "--batch", "4", "--epochs", "2", "--partitions", "1"])
    small, large = r["lakes"]["small"], r["lakes"]["large"]
    assert (small["shards"], large["shards"], large["images"]) == (3, 12, 48)
    for lake in (small, large):
        for run in lake["runs"].values():
            assert run["img_s"] > 0 and run["images"] == 2 * lake["images"]
    assert small["runs"]["random"]["read_ratio"] == small["runs"]["shards"]["read_ratio"] == 0.5  # 2 epochs, read once
    assert large["runs"]["shards"]["read_ratio"] <= 1.1 < large["runs"]["random"]["read_ratio"]
    assert r["shards_large_over_small_img_s"] > 0
    assert capsys.readouterr().out.count("\n| ") == 2


def test_train_input_quality_comparison_runs():
    from benchmarks import train_input

    q = train_input.train_compare(epochs=1, products=40, backbone="test_efficientnet", image_size=48, batch=8)
    for sampler in train_input.SAMPLERS:
        assert 0 <= q[sampler]["test_mAP"] <= 1 and q[sampler]["val_mAP"] is not None


@pytest.mark.slow
def test_nightly_new_benchmark_runs(capsys):
    from benchmarks import nightly_new

    r = nightly_new.main(["--products", "4", "--sides", "120", "--models", "test_efficientnet:32",
                          "--repeats", "1"])
    (m,) = r["results"]
    assert (m["products"], m["side"], m["repeats"]) == (4, 120, 1)
    for path in nightly_new.PATHS:
        assert m["img_s"][path] > 0 and len(m["wall_s"][path]) == 1, path
    assert m["vs_baseline"]["nightly"] > 0 and m["vs_baseline"]["ingest_tag"] > 0 and m["tag_empty_s"] > 0
    assert m["nightly_vs_ingest_tag"]["rows"] > 0
    assert capsys.readouterr().out.count("\n| ") == 1


def test_scale_goals_are_checked_from_the_figures():
    from benchmarks import scale

    def size(n, peaks, night):
        return dict(products=n, night_ratio=night,
                    steps={s: dict(seconds=1.0, peak_mb=p) for s, p in zip(scale.STEPS, peaks)})

    start = dict(ingest_mb=200.0, tag_mb=1000.0, help_mb=90.0)
    g = scale.goals([size(10, [300, 1100, 300, 1100], 0.2), size(100, [450, 1600, 301, 1100], 0.05)], start)
    assert (g["ingest_peak_ratio"]["value"], g["ingest_peak_ratio"]["met"]) == (1.5, True)
    assert (g["tag_full_peak_over_startup_mb"]["value"], g["tag_full_peak_over_startup_mb"]["met"]) == (600.0, False)
    assert (g["reingest_peak_over_startup_mb"]["value"], g["reingest_peak_over_startup_mb"]["met"]) == (101.0, True)
    assert g["tag_full_peak_ratio"]["met"] is True and g["night_ratio"] == dict(value=0.05, limit=0.05, met=True)
    assert len(g) == 2 * len(scale.STEPS) + 1


@pytest.mark.slow  # 13 whole commands, each a fresh process that imports torch
def test_scale_benchmark_runs(tmp_path, capsys):
    import json

    from benchmarks import scale

    r = scale.main(["--sizes", "20,40", "--workdir", str(tmp_path), "--json", str(tmp_path / "scale.json")])
    assert [(s["products"], s["changed"]) for s in r["sizes"]] == [(20, 1), (40, 1)]
    for s in r["sizes"]:
        assert all(s["checks"].values()), s["checks"]  # ingested, tagged all, then exactly the changed
        for step in scale.STEPS:
            assert s["steps"][step]["seconds"] > 0 and s["steps"][step]["peak_mb"] > 0, step
    assert r["startup"]["tag_mb"] > r["startup"]["help_mb"] > 0
    assert set(r["goals"]) == scale.goals(r["sizes"], r["startup"]).keys() and len(r["goals"]) == 9
    assert json.loads((tmp_path / "scale.json").read_text()) == r
    out = capsys.readouterr().out
    assert out.count("\n| 40 | ") == 5 and "| night_ratio |" in out
    assert [p.name for p in tmp_path.iterdir()] == ["scale.json"]  # catalogs and lakes removed


@pytest.mark.slow
def test_quality_benchmark_runs_on_a_slice_of_the_real_catalog(tmp_path):
    """Every model of the quality benchmark, the TF-IDF baseline and the table, on 400 of the
    shared catalog's products with timm's test network (the figures mean nothing here)."""
    from tests.conftest import SHARED_CATALOG

    if not (SHARED_CATALOG / "styles.csv").exists():
        pytest.skip("the shared catalog is not here (../shared/datasets)")
    out = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--limit", "400", "--epochs", "1",
                          "--image-size", "32", "--backbone", "test_efficientnet", "--workdir", str(tmp_path),
                          "--set", "text_warmup_epochs=1", "--set", "fused_text_lr_scale=10"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("image + text: accuracy", "image only: accuracy", "text only: accuracy", "TF-IDF + LR: accuracy"):
        assert name in out.stdout
    summary = json.loads(out.stdout[out.stdout.index('{\n  "results"'):out.stdout.rindex("}") + 1])
    assert set(summary["results"]) == {"image + text", "image only", "text only", "TF-IDF + LR"}
    assert all(0 <= r["mean_accuracy"] <= 1 for r in summary["results"].values())
    assert summary["base"]["text_warmup_epochs"] == 1 and summary["base"]["fused_text_lr_scale"] == 10
    # the paired bootstrap reads each model's predictions table: the same products and figures
    compared = summary["compared"]["models"]
    assert summary["compared"]["reference"] == "image + text" and set(compared) == set(summary["results"])
    for name, r in summary["results"].items():
        assert compared[name]["mean_accuracy"] == pytest.approx(r["mean_accuracy"], abs=1e-4)
        assert compared[name]["mean_macro_f1"] == pytest.approx(r["mean_macro_f1"], abs=1e-4)
        lo, hi = compared[name]["mean_accuracy_interval"]
        assert lo <= r["mean_accuracy"] <= hi
    lead = compared["TF-IDF + LR"]["image + text lead, accuracy"]
    assert lead["interval"][0] <= lead["difference"] <= lead["interval"][1] and 0 <= lead["ahead_share"] <= 1
    assert "| TF-IDF + LR | " in out.stdout and "image + text lead: accuracy [95%]" in out.stdout

    # the text encoder screen reads the same workdir: its lake and the test export's
    from benchmarks import text_encoders

    found = text_encoders.main(["--workdir", str(tmp_path)])
    assert set(found) == {"TF-IDF", "WordLlama", "TF-IDF + WordLlama"}
    for r in found.values():
        assert 0 < r["mean_accuracy"] <= 1 and 0 < r["validation_mean_accuracy"] <= 1
        assert set(r["per_attribute"]) == set(summary["results"]["TF-IDF + LR"]["per_attribute"])
    # the same features, split, C grid and test export as the quality benchmark's baseline
    assert found["TF-IDF"]["mean_accuracy"] == summary["results"]["TF-IDF + LR"]["mean_accuracy"]


@pytest.mark.slow
def test_the_quality_benchmark_reads_the_text_columns_its_taxonomy_maps(tmp_path):
    """--taxonomy: another `catalog: text:` on the same split (here the title and the year),
    stored with the products and read by the models of the run (TF-IDF alone here)."""
    import pandas as pd

    from benchmarks.quality import TAXONOMY
    from tagger.lake import PRODUCTS_PATH
    from tests.conftest import SHARED_CATALOG

    if not (SHARED_CATALOG / "styles.csv").exists():
        pytest.skip("the shared catalog is not here (../shared/datasets)")
    mapped = Path(TAXONOMY).read_text().replace("  text: [productDisplayName]\n", "  text: [productDisplayName, year]\n")
    assert mapped != Path(TAXONOMY).read_text()
    (tmp_path / "taxonomy.yaml").write_text(mapped)
    out = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--limit", "300", "--only", "TF-IDF + LR",
                          "--taxonomy", str(tmp_path / "taxonomy.yaml"), "--workdir", str(tmp_path / "work")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout[out.stdout.index('{\n  "results"'):out.stdout.rindex("}") + 1])
    assert summary["taxonomy"] == str(tmp_path / "taxonomy.yaml") and set(summary["results"]) == {"TF-IDF + LR"}
    export = pd.read_csv(tmp_path / "work/exports/train.csv", dtype=str, keep_default_na=False)
    products = pd.read_parquet(tmp_path / "work/lake" / PRODUCTS_PATH)
    text = dict(zip(products["product_id"], products["text"]))
    dated = export[export["year"] != ""].head(5)
    assert len(dated) and all(text[i] == " ".join(f"{t} {y}".split())  # as ingest cleans it
                              for i, t, y in zip(dated["id"], dated["productDisplayName"], dated["year"]))


def test_the_quality_benchmark_refuses_a_setting_trainconfig_does_not_have():
    out = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--set", "text_warmup=5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "TrainConfig field" in out.stderr


def test_text_warmup_benchmark_reads_the_titles(trained_lake):
    from benchmarks.text_warmup import screen

    lake, _ = trained_lake  # the demo catalog, whose products have titles
    found = screen(str(lake), 4, "test_efficientnet")
    assert found["epochs"] == 4 and len(found["losses"]) == 4
    assert found["losses"][-1] < found["losses"][0]
    # the demo's titles name the article type (5 values): the text alone reads it, on a
    # validation split of 9 products
    assert found["top1"]["article_type"] > 0.5 and 0 < found["mAP"] <= 1
    assert set(found["macro_f1"]) == set(found["top1"])
    assert 0 < found["macro_f1"]["article_type"] <= 1 and 0 < found["mean_macro_f1"] <= 1
    # --text overrides the text features screened
    from benchmarks.text_warmup import text_option

    assert text_option("char_ngrams=2,3") == ("char_ngrams", (2, 3)) and text_option("dim=8") == ("dim", 8)
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        text_option("ngrams=3")
    wider = screen(str(lake), 1, "test_efficientnet", {"char_ngrams": (2, 3), "max_tokens": 128})
    assert wider["text"]["char_ngrams"] == [2, 3] and wider["text"]["max_tokens"] == 128


def test_the_wordllama_encoder_embeds_titles_offline():
    """The weights and tokenizer come from the installed wheel (no hub): similar titles land
    closer than unrelated ones, rows are unit length, an empty title is zeros."""
    from benchmarks.text_encoders import WordLlamaEncoder

    e = WordLlamaEncoder()(["Turtle Check Men Navy Blue Shirt", "Men Blue Checked Shirt",
                            "Women Gold Toned Earrings", ""])
    assert e.shape == (4, 256) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e[:3], axis=1), 1, atol=1e-5) and not e[3].any()
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1


def test_the_encoder_screen_says_what_to_run_first(tmp_path):
    from benchmarks import text_encoders

    with pytest.raises(SystemExit, match="No lake under"):
        text_encoders.main(["--workdir", str(tmp_path)])
    (tmp_path / "lake").mkdir()  # a lake whose test export was never ingested
    with pytest.raises(SystemExit, match='--only "TF-IDF \\+ LR"'):
        text_encoders.main(["--workdir", str(tmp_path)])


def test_title_memory_scores_the_training_majority_on_seen_titles_only(tmp_path):
    import pandas as pd

    from benchmarks.quality import in_test_export
    from benchmarks.title_memory import main, title_memory

    ids = pd.Series([str(i) for i in range(400)])
    test = in_test_export(ids, 0.5)
    held = ids[test].tolist()
    # three training products under one title (Summer twice, Winter once), the rest unique
    seasons = ["Summer", "Summer", "Winter"]
    rows = [{"id": i, "productDisplayName": "shared" if n < 3 else f"title {i}",
             "season": seasons[n] if n < 3 else "Fall"} for n, i in enumerate(ids[~test])]
    rows += [{"id": held[0], "productDisplayName": "shared", "season": "Summer"},  # right
             {"id": held[1], "productDisplayName": "shared", "season": "Winter"},  # wrong
             {"id": held[2], "productDisplayName": "shared", "season": ""},  # unlabelled: left out
             {"id": held[3], "productDisplayName": "never seen", "season": "Fall"}]
    found = title_memory(pd.DataFrame(rows), 0.5, attributes=("season",))["season"]
    assert found == {"labelled_test": 3, "title_seen_share": 2 / 3, "seen": 2, "majority_accuracy": 0.5}

    # a model's predictions on the same test products, apart for seen and unseen titles
    import numpy as np

    from benchmarks.title_memory import model_by_seen
    from catalog_schemas.taxonomy import load_taxonomy
    from tagger.quality.evaluation import prediction_table

    tax = load_taxonomy("name: t\nattributes:\n  - {name: season, kind: single, values: [Fall, Summer, Winter]}\n")
    targets = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)  # held 0, 1, 3 as labelled
    decided = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0]], bool)  # right, wrong (Summer for Winter), right
    table = prediction_table(tax, [held[0], held[1], held[3]], targets, np.ones_like(decided), decided * 0.9, decided)
    by_seen = model_by_seen(pd.DataFrame(rows), table, tax, 0.5)["season"]
    assert by_seen == {"seen": 2, "unseen": 1, "seen_accuracy": 0.5, "unseen_accuracy": 1.0}

    with pytest.raises(SystemExit, match="No catalog export"):
        main(["--styles", "/nonexistent/styles.csv"])

    # the command line: the shipped taxonomy's attributes, a model's predictions file
    from benchmarks.quality import TAXONOMY

    from catalog_schemas.taxonomy import load_taxonomy as load
    from tagger.io.parquet import write_table
    from tagger.io.storage import open_storage

    shipped = load(TAXONOMY)
    frame = pd.DataFrame(rows)
    for a in shipped.attributes:
        frame[a.name] = frame.get(a.name, "")
    frame.to_csv(tmp_path / "styles.csv", index=False)
    sl, values = shipped.slices["season"], list(shipped.attribute("season").values)
    full_targets = np.zeros((3, shipped.num_outputs), np.float32)
    full_mask = np.zeros_like(full_targets, bool)
    full_decided = np.zeros_like(full_mask)
    for i, (truth, said) in enumerate([("Summer", "Summer"), ("Winter", "Summer"), ("Fall", "Fall")]):
        full_mask[i, sl] = True
        full_targets[i, sl.start + values.index(truth)] = 1
        full_decided[i, sl.start + values.index(said)] = True
    write_table(open_storage(tmp_path), "p.parquet", prediction_table(
        shipped, [held[0], held[1], held[3]], full_targets, full_mask, full_decided * 0.9, full_decided))
    found = main(["--styles", str(tmp_path / "styles.csv"), "--test-share", "0.5",
                  "--predictions", f"fused={tmp_path / 'p.parquet'}"])
    assert found["season"]["models"]["fused"] == by_seen
    with pytest.raises(SystemExit, match="NAME=URI"):
        main(["--styles", str(tmp_path / "styles.csv"), "--predictions", str(tmp_path / "p.parquet")])
