import json

import numpy as np
import pyarrow as pa
import pytest

from tagger.cli import main
from tagger.model.evaluate import evaluate_model
from tagger.quality.evaluation import compute_evaluation
from tagger.demo.sample import generate_catalog
from tests.conftest import SMALL_TAXONOMY as TAX



def test_single_attributes_are_decoded_as_one_choice_and_unknowns_ignored():
    targets = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 1], [0, 0, 1, 0, 0]], dtype=np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]], dtype=bool)
    scores = np.array([[.9, .8, .1, .7, .2], [.6, .7, .1, .1, .9], [.9, .1, .1, .1, .1]], dtype=np.float32)
    thresholds = np.full(5, 0.5, dtype=np.float32)
    decisions, metrics = compute_evaluation(TAX, targets, mask, scores, thresholds)
    # row 0: red and blue pass, red scores best -> red; row 1: blue; row 2's colour unknown
    assert decisions[:, :3].tolist() == [[True, False, False], [False, True, False], [True, False, False]]
    assert metrics["per_attribute"]["colour"]["accuracy"] == 1.0  # row 2 does not count
    assert metrics["per_value"]["colour"]["red"]["known"] == 2


def test_predictions_written_a_part_at_a_time_are_the_table_in_one_piece(tmp_path):
    import pyarrow.parquet as pq

    from tagger.io.storage import open_storage
    from tagger.model.evaluate import write_predictions
    from tagger.quality.evaluation import prediction_table

    rng = np.random.default_rng(0)
    targets, mask = (rng.random((7, 5)) > 0.5).astype(np.float32), rng.random((7, 5)) > 0.2
    scores = rng.random((7, 5)).astype(np.float32)
    ids = [f"p{i}" for i in range(7)]
    write_predictions(open_storage(tmp_path), "parts.parquet", TAX, ids, targets, mask, scores, scores > 0.5,
                      products_per_part=3)
    whole = prediction_table(TAX, ids, targets, mask, scores, scores > 0.5)
    assert pq.read_table(tmp_path / "parts.parquet").equals(whole) and whole.num_rows == mask.sum()


@pytest.mark.slow
def test_evaluate_a_catalog_the_model_never_saw(trained_lake, tmp_path, capsys, caplog):
    lake, version = trained_lake
    catalog = generate_catalog(tmp_path / "holdout", n_products=30, seed=99, image_size=64)
    summary = evaluate_model(str(lake), str(catalog), name="holdout")
    assert summary["model_version"] == version and summary["products"] == 30
    assert summary["rejected"] == 3  # the generator's three bad rows
    folder = lake / "models" / version / "evaluations" / "holdout"
    names = {p.name for p in folder.iterdir()}
    assert {"report.md", "metrics.json", "per_attribute.png", "confusion_colour.png"} <= names
    report = (folder / "report.md").read_text()
    assert "![Confusion: colour](confusion_colour.png)" in report and "| colour | single |" in report
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["micro_f1"] == summary["micro_f1"]
    # every known label beside its score and decision: the report's accuracy comes back from it
    import pyarrow.parquet as pq

    from catalog_schemas.tables import EVALUATION_PREDICTIONS
    from tagger.model.versions import read_card
    from tagger.io.storage import open_storage
    from tagger.quality.compare import single_choices

    assert summary["predictions"].endswith("evaluations/holdout/predictions.parquet")
    table = pq.read_table(folder / "predictions.parquet")
    assert table.schema.equals(EVALUATION_PREDICTIONS) and len(set(table["product_id"].to_pylist())) == 30
    taxonomy = read_card(open_storage(str(lake)), version).taxonomy
    for attribute, (label, choice) in single_choices(table, taxonomy, sorted(set(table["product_id"].to_pylist()))).items():
        known = label >= 0
        assert (label[known] == choice[known]).mean() == pytest.approx(metrics["per_attribute"][attribute]["accuracy"])
    # the evaluation export never enters the lake's own catalog
    assert (lake / "evaluations" / "holdout" / "catalog" / "products").is_dir()
    assert main(["evaluate", str(catalog), "--lake", str(lake), "--name", "again"]) == 0
    assert json.loads(capsys.readouterr().out)["products"] == 30

    # tagger compare: another version that abstains on the colour of half the products
    import shutil

    from tagger.io.parquet import write_table

    other = lake / "models" / f"{version}-b"
    (other / "evaluations" / "holdout").mkdir(parents=True)
    shutil.copy(lake / "models" / version / "card.json", other / "card.json")
    worse = table.to_pandas()
    colour = worse["attribute"] == "colour"
    half = worse["product_id"].isin(sorted(set(worse["product_id"]))[:15])
    worse.loc[colour & half, "decided"] = False  # abstains: wrong wherever the colour is known
    write_table(open_storage(str(lake)), f"models/{version}-b/evaluations/holdout/predictions.parquet",
                pa.Table.from_pandas(worse, schema=EVALUATION_PREDICTIONS, preserve_index=False))
    assert main(["compare", version, f"{version}-b", "--name", "holdout", "--lake", str(lake),
                 "--resamples", "200"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert compared["reference"] == version and compared["products"] == 30 and compared["evaluation"] == "holdout"
    ids = sorted(set(table["product_id"].to_pylist()))
    choices = single_choices(table, taxonomy, ids)
    label, choice = choices["colour"]
    known = label >= 0
    # b abstains on the first 15 products' colour: it loses those the model got right
    lost = ((label == choice) & known)[:15].sum() / known.sum() / len(choices)
    ours, lead = compared["models"][version], compared["models"][f"{version}-b"][f"{version} lead, accuracy"]
    assert lead["difference"] == pytest.approx(lost, abs=2e-4) and (lead["ahead_share"] > 0.5) == (lost > 0)
    assert ours["mean_accuracy"] == pytest.approx(np.mean([metrics["per_attribute"][a]["accuracy"] for a in choices]),
                                                  abs=1e-4)
    assert main(["compare", version, "--name", "holdout", "--lake", str(lake)]) == 2  # one version: an error
    assert main(["compare", version, f"{version}-b", "--name", "nope", "--lake", str(lake)]) == 2
    assert "has no evaluation 'nope'" in caplog.text and "tagger evaluate EXPORT" in caplog.text
    # a version of another taxonomy answers other questions: an error, not a comparison
    third = lake / "models" / f"{version}-c"
    shutil.copytree(other, third)
    card = (third / "card.json").read_text()  # one value renamed everywhere: a valid card
    value = json.loads(card)["taxonomy"]["attributes"][0]["values"][-1]
    (third / "card.json").write_text(card.replace(f'"{value}"', f'"{value} (renamed)"'))
    assert main(["compare", version, f"{version}-c", "--name", "holdout", "--lake", str(lake)]) == 2
    assert f"Model {version}-c has another taxonomy than {version}" in caplog.text


@pytest.mark.slow
def test_evaluate_refuses_a_different_taxonomy(trained_lake, tmp_path):
    lake, _ = trained_lake
    other = tmp_path / "other.yaml"
    other.write_text("name: x\nattributes: [{name: colour, kind: single, values: [red]}]\n")
    with pytest.raises(ValueError, match="does not match model"):
        evaluate_model(str(lake), str(tmp_path / "c.csv"), taxonomy=str(other))


@pytest.mark.slow
def test_training_writes_the_validation_report_with_plots(trained_lake):
    lake, version = trained_lake
    folder = lake / "models" / version
    assert {"report.md", "per_attribute.png", "metrics.json"} <= {p.name for p in folder.iterdir()}
    assert (folder / "per_attribute.png").read_bytes()[:4] == b"\x89PNG"
