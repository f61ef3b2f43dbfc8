"""Review pull semantics without a Label Studio: a stand-in that hands out an export.

Corrections win in tags/latest (source='reviewed'), are never overwritten by a tag run, and
training learns them; an export that changes a label after the review wins over it. The
real server is in test_label_studio.py.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tagger.corrections import read_corrections
from tagger.io.storage import open_storage
from tagger.lake import CORRECTIONS_PATH, LATEST_PATH, read_lake_taxonomy, read_latest, read_products
from tagger.review.client import ReviewRefused
from tagger.review.project import label_config, project_title
from tagger.review.pull import pull_reviews
from tagger.review.push import build_task, select_products
from tagger.tag.run import tag_catalog
from tagger.train.split import load_training_data
from tests.conftest import DEMO_TAXONOMY


class StandIn:
    """What pull_reviews asks of a Label Studio: its project and the export of its tasks."""

    url = "http://127.0.0.1:9"

    def __init__(self, taxonomy, tasks: list[dict]):
        self.tasks, self.title, self.config = tasks, project_title(taxonomy), label_config(taxonomy)

    def projects(self) -> list[dict]:
        return [{"id": 7, "title": self.title, "label_config": self.config}]

    def export_tasks(self, project_id: int) -> list[dict]:
        return self.tasks

    def user_name(self, completed_by) -> str:
        return f"reviewer{completed_by}@example.com"

    def project_url(self, project_id: int) -> str:
        return f"{self.url}/projects/{project_id}"


def _annotated(task_id: int, task: dict, choices: dict[str, list[str] | None], when: datetime) -> dict:
    """The task as an export has it once a reviewer submitted: the pre-annotation accepted,
    but for `choices` (attribute -> values; None: every choice of it unticked)."""
    shown = {r["from_name"]: r["value"]["choices"] for r in task["predictions"][0]["result"]}
    decided = {a: v for a, v in {**shown, **choices}.items() if v is not None}
    result = [{"from_name": a, "to_name": "image", "type": "choices", "value": {"choices": v}}
              for a, v in decided.items()]
    return {**task, "id": task_id, "annotations": [
        {"id": 100 + task_id, "completed_by": 1, "result": result, "was_cancelled": False,
         "updated_at": when.isoformat().replace("+00:00", "Z")}]}


def _task(taxonomy, products: dict, latest_rows: list[dict], pid: str, reason: str = "needs_review") -> dict:
    rows = [r for r in latest_rows if r["product_id"] == pid]
    return build_task(taxonomy, products[pid], reason, rows, [], "data:image/jpeg;base64,")


def _pick(latest_rows: list[dict], source: str, attribute: str) -> str:
    return next(r["product_id"] for r in latest_rows if r["source"] == source and r["attribute"] == attribute)


def _other(taxonomy, attribute: str, value: str) -> str:
    return next(v for v in taxonomy.attribute(attribute).values if v != value)


def test_pulled_corrections_win_in_latest_and_training_until_the_export_changes(trained_lake, catalog):
    from tagger.ingest.run import ingest_catalog

    lake, version = trained_lake
    lake = str(lake)
    tag_catalog(lake, model_version=version)
    storage = open_storage(lake)
    taxonomy = read_lake_taxonomy(storage)
    latest = read_latest(storage).to_pylist()
    products = {p["product_id"]: p for p in read_products(storage).to_pylist()}
    # p: colour unknown in the catalog (the model's tag, if any, is shown); q: the catalog's own
    # colour, which a reviewer changes (a label issue, say).
    p = next(pid for pid, prod in sorted(products.items()) if "colour" not in dict(prod["labels"]))
    q = _pick(latest, "curated", "colour")
    p_model = [r["value"] for r in latest if r["product_id"] == p and r["attribute"] == "colour"]
    q_given = next(r["value"] for r in latest if r["product_id"] == q and r["attribute"] == "colour")
    p_new = _other(taxonomy, "colour", p_model[0] if p_model else "")
    q_new = _other(taxonomy, "colour", q_given)
    now = datetime.now(timezone.utc)
    gone = {**_task(taxonomy, products, latest, p), "data": {**_task(taxonomy, products, latest, p)["data"],
                                                             "product_id": "GONE-1"}}
    tasks = [_annotated(1, _task(taxonomy, products, latest, p), {"colour": [p_new]}, now),
             _annotated(2, _task(taxonomy, products, latest, q, "label_issue"), {"colour": [q_new]}, now),
             _annotated(3, gone, {"colour": [p_new]}, now),
             {**_task(taxonomy, products, latest, q), "id": 4, "annotations": []}]  # not done yet
    result = pull_reviews(lake, client=StandIn(taxonomy, tasks), run_id="pull-1")

    assert (result.tasks, result.annotated, result.changed) == (4, 3, result.corrections)
    shown = [x for t in tasks[:2] for xs in t["data"]["shown_scores"].values() for x in xs]
    assert result.feedback["overall"]["reviewed"] == sum(x is not None for x in shown)  # model tags
    assert result.skipped == ["task 3: product GONE-1 is no longer in the catalog"]
    got = {(r["product_id"], r["attribute"]): r for r in read_corrections(storage).to_pylist()}
    assert got[(p, "colour")]["values"] == [p_new] and got[(p, "colour")]["shown"] == p_model
    assert got[(p, "colour")]["reviewer"] == "reviewer1@example.com" and got[(p, "colour")]["task"] == "7/1"
    assert got[(q, "colour")]["reason"] == "label_issue"

    def colour_rows(pid: str) -> list[tuple[str, str]]:
        t = read_latest(storage)
        t = t.filter(pc.and_(pc.equal(t["product_id"], pid), pc.equal(t["attribute"], "colour")))
        return list(zip(t["value"].to_pylist(), t["source"].to_pylist()))

    assert colour_rows(p) == [(p_new, "reviewed")] and colour_rows(q) == [(q_new, "reviewed")]
    before = storage.read_bytes(LATEST_PATH)
    again = pull_reviews(lake, client=StandIn(taxonomy, tasks), run_id="pull-2")
    assert again.changed == 0 and storage.read_bytes(LATEST_PATH) == before  # idempotent

    tag_catalog(lake, model_version=version, full=True)  # predictions never overwrite them
    assert colour_rows(p) == [(p_new, "reviewed")] and colour_rows(q) == [(q_new, "reviewed")]
    data = load_training_data(storage)
    sl = taxonomy.slices["colour"]

    def trained_colour(pid: str) -> str:
        row = data.product_ids.index(pid)
        return taxonomy.attribute("colour").values[int(data.targets[row, sl].argmax())]

    assert trained_colour(p) == p_new and trained_colour(q) == q_new
    fixed = _rewrite_colour(catalog, q, {q_given, q_new})  # the export changes q after the review
    ingest_catalog(str(catalog), DEMO_TAXONOMY, lake)
    tag_catalog(lake, model_version=version)
    data = load_training_data(storage)
    assert trained_colour(q) == fixed and trained_colour(p) == p_new
    assert colour_rows(q) == [(fixed, "curated")] and colour_rows(p) == [(p_new, "reviewed")]


def _rewrite_colour(catalog, pid: str, avoid: set[str]) -> str:
    """Set the product's colour in the CSV export to a value not in `avoid`; that value."""
    import csv

    from tagger.demo.sample import COLOURS

    with catalog.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    new = next(v for v in COLOURS if v not in avoid)
    for r in rows:
        if r["id"] == pid:
            r["colour"] = new
    with catalog.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return new


def test_a_value_outside_the_taxonomy_refuses_the_pull_and_writes_nothing(trained_lake):
    lake, version = trained_lake
    tag_catalog(str(lake), model_version=version)
    storage = open_storage(str(lake))
    taxonomy = read_lake_taxonomy(storage)
    latest = read_latest(storage).to_pylist()
    products = {p["product_id"]: p for p in read_products(storage).to_pylist()}
    pid = sorted(products)[0]
    now = datetime.now(timezone.utc)
    good = _annotated(1, _task(taxonomy, products, latest, pid), {"colour": ["red"]}, now)
    bad = _annotated(2, _task(taxonomy, products, latest, sorted(products)[1]), {"colour": ["purple"]}, now)
    before = storage.read_bytes(LATEST_PATH)
    with pytest.raises(ReviewRefused, match=r"^Task 2: colour value 'purple' is not in the taxonomy. "
                       r"Known: red, green, blue"):
        pull_reviews(str(lake), client=StandIn(taxonomy, [good, bad]))
    two = _annotated(3, _task(taxonomy, products, latest, pid), {"colour": ["red", "blue"]}, now)
    with pytest.raises(ReviewRefused, match="Task 3: colour is single-choice but the annotation has 2"):
        pull_reviews(str(lake), client=StandIn(taxonomy, [good, two]))
    assert not storage.exists(CORRECTIONS_PATH) and storage.read_bytes(LATEST_PATH) == before


def test_a_shown_multi_attribute_left_empty_means_none_of_its_values(trained_lake):
    from tagger.review.pull import corrections_from_tasks

    lake, _ = trained_lake
    storage = open_storage(str(lake))
    taxonomy = read_lake_taxonomy(storage)
    products = {p["product_id"]: p for p in read_products(storage).to_pylist()}
    pid = sorted(products)[0]
    rows = [dict(product_id=pid, attribute="features", value="logo", score=0.7, source="model",
                 needs_review=True, model_version="m1"),
            dict(product_id=pid, attribute="colour", value="red", score=0.9, source="model",
                 needs_review=False, model_version="m1")]
    task = build_task(taxonomy, products[pid], "needs_review", rows, [], "data:image/jpeg;base64,")
    assert task["predictions"][0]["result"] == [
        {"from_name": "features", "to_name": "image", "type": "choices", "value": {"choices": ["logo"]}},
        {"from_name": "colour", "to_name": "image", "type": "choices", "value": {"choices": ["red"]}}]
    assert task["data"]["shown_scores"] == {"features": [0.7], "colour": [0.9]}
    done = _annotated(5, task, {"features": None}, datetime.now(timezone.utc))  # logo unticked
    table, skipped, n = corrections_from_tasks(taxonomy, [done], products, str, 9, "pull-x")
    got = {r["attribute"]: (r["values"], r["shown"]) for r in table.to_pylist()}
    assert got == {"colour": (["red"], ["red"]), "features": ([], ["logo"])} and n == 1 and not skipped


def test_push_selects_needs_review_then_label_issues_then_a_sample():
    from catalog_schemas.tables import LABEL_ISSUES, TAG_LATEST

    def tag(pid, source, review):
        return dict(product_id=pid, attribute="colour", value="red", score=0.5, source=source,
                    image_hash="h", needs_review=review, model_version="m", run_id="r",
                    tagged_at=datetime.now(timezone.utc))

    latest = pa.Table.from_pylist([tag("A", "model", True), tag("A", "model", False),
                                   tag("B", "model", False), tag("C", "curated", False),
                                   tag("D", "model", False)], schema=TAG_LATEST)
    issues = pa.Table.from_pylist([dict(product_id=pid, attribute="colour", given=["red"], suggested=["blue"],
                                        score=0.1, split="test", model_version="m", run_id="i",
                                        found_at=datetime.now(timezone.utc)) for pid in ("A", "C")],
                                  schema=LABEL_ISSUES)
    assert select_products(latest, None, 0, 0) == {"A": "needs_review"}
    assert select_products(latest, issues, 0, 0) == {"A": "needs_review", "C": "label_issue"}
    sampled = select_products(latest, issues, 5, 0)
    assert sampled == {"A": "needs_review", "C": "label_issue", "B": "sample", "D": "sample"}


def test_the_labelling_config_has_one_choice_group_per_attribute():
    import xml.etree.ElementTree as ET

    from catalog_schemas.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(DEMO_TAXONOMY)
    root = ET.fromstring(label_config(taxonomy))
    groups = {c.get("name"): (c.get("choice"), [v.get("value") for v in c]) for c in root.iter("Choices")}
    assert groups == {a.name: ("single-radio" if a.kind == "single" else "multiple", list(a.values))
                      for a in taxonomy.attributes}
    assert {c.get("toName") for c in root.iter("Choices")} == {"image"}
    odd = load_taxonomy({"name": "odd", "attributes": [
        {"name": "fit", "kind": "single", "values": ['6" <slim> & "wide"', "x"]}]})
    assert [v.get("value") for v in ET.fromstring(label_config(odd)).iter("Choice")] == [
        '6" <slim> & "wide"', "x"]


def test_a_label_issue_task_shows_the_catalog_label_and_the_suggestion():
    from catalog_schemas.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(DEMO_TAXONOMY)
    product = dict(product_id="P7", category="tops", image_hash="h7")
    rows = [dict(product_id="P7", attribute="colour", value="green", score=None, source="curated",
                 needs_review=False, model_version="m2"),
            dict(product_id="P7", attribute="pattern", value="solid", score=0.8, source="model",
                 needs_review=False, model_version="m2")]
    issue = [dict(product_id="P7", attribute="colour", given=["green"], suggested=["blue"])]
    task = build_task(taxonomy, product, "label_issue", rows, issue, "https://img.example/p7.jpg")
    data = task["data"]
    assert data["about"] == "P7 (tops): label probably wrong (colour: catalog says green, model suggests blue)"
    assert data["shown"] == {"colour": ["green"], "pattern": ["solid"]}
    assert data["shown_scores"] == {"colour": [None], "pattern": [0.8]}
    assert (data["reason"], data["model_version"], data["image"]) == ("label_issue", "m2", "https://img.example/p7.jpg")
    assert task["predictions"][0]["score"] == 0.8 and task["predictions"][0]["model_version"] == "m2"
