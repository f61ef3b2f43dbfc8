"""Label issues: cleanlab on out-of-sample scores finds labels flipped on purpose."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

from catalog_schemas.taxonomy import load_taxonomy
from tagger.quality.label_issues import compute_label_issues, precision_recall
from tests.conftest import DEMO_TAXONOMY, SMALL_TAXONOMY


def _confident(values: list[int], k: int, p: float = 0.9) -> np.ndarray:
    """Scores [N, k] that put `p` on each row's value and share the rest."""
    out = np.full((len(values), k), (1 - p) / (k - 1), dtype=np.float32)
    out[np.arange(len(values)), values] = p
    return out


def test_a_single_label_the_scores_contradict_is_flagged_with_the_suggestion():
    tax = load_taxonomy({"name": "c", "attributes": [
        {"name": "colour", "kind": "single", "values": ["red", "blue", "green"]}]})
    truth = [0, 1, 2] * 10  # 30 products, 10 of each colour
    targets = np.eye(3, dtype=np.float32)[truth]
    targets[4] = [0, 0, 1]  # product 4 is blue, labelled green
    mask = np.ones_like(targets, dtype=bool)
    issues = compute_label_issues(tax, targets, mask, _confident(truth, 3), np.full(3, 0.5))
    assert [(i.row, i.attribute, i.given, i.suggested) for i in issues] == [
        (4, "colour", ("green",), ("blue",))]
    assert 0 <= issues[0].score < 0.1  # its label quality: the score of the given value


def test_no_process_pool_is_forked(monkeypatch):
    """cleanlab's default forks a multiprocessing pool, which hangs for good in a process with
    running threads (a training run's, Prefect's): label issues must never start one."""
    import multiprocessing.pool

    def refuse(*args, **kwargs):
        raise AssertionError("a multiprocessing pool was started")

    monkeypatch.setattr(multiprocessing.pool.Pool, "__init__", refuse)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 3000).tolist()  # large enough for cleanlab's pool
    targets = np.eye(5, dtype=np.float32)[[t if t < 3 else 0 for t in truth]]
    targets[:, 3:] = rng.integers(0, 2, (3000, 2))
    scores = np.concatenate([_confident(truth, 3), rng.random((3000, 2)).astype(np.float32)], axis=1)
    issues = compute_label_issues(SMALL_TAXONOMY, targets, np.ones_like(targets, dtype=bool), scores,
                                  np.full(5, 0.5))
    assert {i.attribute for i in issues} == {"features"}  # the random scores contradict some


def test_unknown_labels_are_not_judged_and_multi_attributes_are_multi_label():
    # colour unknown for every row (masked): skipped; features: row 3 claims a zip it lacks.
    has = [[0], [1], [0, 1], [], [0]] * 4  # 20 products
    targets = np.zeros((20, 5), dtype=np.float32)
    for r, vals in enumerate(has):
        targets[r, [3 + v for v in vals]] = 1
    scores = np.full((20, 5), 0.05, dtype=np.float32)
    scores[:, 3:] = np.where(targets[:, 3:] > 0, 0.95, 0.05)
    targets[3, 4] = 1  # the wrong label: row 3 has no zip, the catalog says zip
    mask = np.zeros_like(targets, dtype=bool)
    mask[:, 3:] = True
    issues = compute_label_issues(SMALL_TAXONOMY, targets, mask, scores, np.full(5, 0.5))
    assert [(i.row, i.attribute, i.given, i.suggested) for i in issues] == [
        (3, "features", ("zip",), ())]


def test_precision_and_recall_of_a_found_set():
    assert precision_recall({1, 2, 3, 4}, {2, 3, 9}) == (0.5, 2 / 3)
    assert precision_recall(set(), {1}) == (None, 0.0)


def _flip_colours(catalog: Path, fraction: float, seed: int) -> set[str]:
    """Give `fraction` of the products with a known colour another colour; their ids."""
    from tagger.demo.sample import COLOURS

    with catalog.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(seed)
    known = [i for i, r in enumerate(rows) if r["colour"] in COLOURS and r["id"].startswith("P")]
    flipped = rng.choice(known, size=round(fraction * len(known)), replace=False)
    for i in flipped:
        rows[i]["colour"] = str(rng.choice([c for c in COLOURS if c != rows[i]["colour"]]))
    with catalog.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return {rows[i]["id"] for i in flipped}


@pytest.mark.slow
def test_five_percent_flipped_colours_are_found_among_the_held_out_products(tmp_path):
    from tagger.config import TrainConfig
    from tagger.demo.sample import generate_catalog
    from tagger.ingest.run import ingest_catalog
    from tagger.io.storage import open_storage
    from tagger.model.versions import read_card
    from tagger.review.issues import find_label_issues, held_out_rows, read_label_issues
    from tagger.train.run import train_model
    from tagger.train.split import load_training_data

    catalog = generate_catalog(tmp_path / "catalog", n_products=800, seed=3, image_size=64,
                               bad_rows=False)
    flipped = _flip_colours(catalog, 0.05, seed=3)
    lake = str(tmp_path / "lake")
    ingest_catalog(str(catalog), DEMO_TAXONOMY, lake)
    # Half the products held out (validation + test): those are the ones whose labels the
    # model's scores can judge.
    config = TrainConfig(backbone="test_efficientnet", image_size=64, epochs=12, batch_size=32, lr=3e-3,
                         pretrained=False, workers=0, val_fraction=0.25, test_fraction=0.25, log_every=100)
    t0 = time.perf_counter()
    version = train_model(lake, config)
    t_train = time.perf_counter() - t0

    result = find_label_issues(lake, model_version=version)
    storage = open_storage(lake)
    data = load_training_data(storage)
    card = read_card(storage, version)
    held = {data.product_ids[i] for rows in held_out_rows(data, card.config, card.data.snapshot,
                                                          version).values() for i in rows}
    table = read_label_issues(storage).to_pylist()
    found = {r["product_id"] for r in table if r["attribute"] == "colour"}
    checkable = flipped & held
    precision, recall = precision_recall(found, checkable)
    print(f"label issues: trained in {t_train:.0f} s, {len(flipped)} colours flipped, {len(checkable)} "
          f"of them held out; found {len(found)} colour issues: precision {precision:.2f}, "
          f"recall {recall:.2f} ({result.seconds:.1f} s)")
    assert found <= held  # nothing the model trained on is judged
    assert result.checked_products == len(held) and len(checkable) >= 12
    # Measured: precision 0.92, recall 0.57 (12 of the 21 held-out flips, 1 false) with the
    # default image dropout; 0.93 / 0.62 without it; one flip is 0.05 of recall here. cleanlab's
    # 'predicted_neq_given' finds more, but it flags every model error, which on a real
    # catalog's colours (accuracy 0.60) is 40% of the products.
    assert precision >= 0.9 and recall >= 0.55
    flips = {r["product_id"]: r for r in table if r["product_id"] in checkable and r["attribute"] == "colour"}
    assert all(r["suggested"] != r["given"] and r["split"] in ("validation", "test") for r in flips.values())


def test_a_lake_whose_labels_changed_since_training_is_refused_with_the_remedy(trained_lake, caplog):
    from datetime import datetime, timezone

    import pyarrow as pa

    from catalog_schemas.tables import CORRECTIONS
    from tagger.cli import main
    from tagger.corrections import write_corrections
    from tagger.io.storage import open_storage
    from tagger.lake import LABEL_ISSUES_PATH, read_products

    lake, version = trained_lake
    storage = open_storage(str(lake))
    first = read_products(storage).to_pylist()[0]
    colour = dict(first["labels"]).get("colour", [None])[0]
    write_corrections(storage, pa.Table.from_pylist([dict(
        product_id=first["product_id"], attribute="colour", values=["white" if colour != "white" else "red"],
        shown=[], shown_scores=[],
        model_version=None, reviewer="r", reviewed_at=datetime.now(timezone.utc), task="1/1",
        reason="label_issue", pull_run_id="p")], schema=CORRECTIONS))
    assert main(["label-issues", "--lake", str(lake), "--model", version]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert f"Model {version} was trained on another snapshot" in errors[0]
    assert "Train a new version (tagger train)" in errors[0]
    assert not storage.exists(LABEL_ISSUES_PATH)
