"""The review loop against a real Label Studio (tests/review/label_studio_server.py): push,
annotate through its API as a reviewer would (accept some, correct some), pull, and check
the corrections table, the latest tags and the next training's labels; then the bad inputs:
a value outside the taxonomy, a wrong token, a legacy token before the organisation allows
them, a server that is not there.
"""

from __future__ import annotations

import time

import pyarrow.compute as pc
import pytest

from tagger.corrections import read_corrections
from tagger.io.storage import open_storage
from tagger.lake import CORRECTIONS_PATH, read_lake_taxonomy, read_latest
from tagger.review.client import LabelStudio, ReviewRefused, ReviewUnreachable
from tagger.review.project import find_project
from tagger.review.pull import pull_reviews
from tagger.review.push import push_reviews
from tagger.tag.run import tag_catalog
from tagger.train.run import train_model
from tagger.train.split import load_training_data
from tests.conftest import TINY_TRAIN
from tests.review.label_studio_server import label_studio
from tests.s3server import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with label_studio(tmp_path_factory.mktemp("label-studio")) as s:
        yield s


def _review_lake(trained_lake) -> str:
    """The trained lake tagged by a model with a precision target, so tags need review."""
    lake = str(trained_lake[0])
    version = train_model(lake, TINY_TRAIN.model_copy(update={"min_precision": 0.95, "promote": "manual"}))
    tag_catalog(lake, model_version=version)
    return lake


def test_push_annotate_pull_round_trip(studio, trained_lake, monkeypatch):
    lake = _review_lake(trained_lake)
    storage = open_storage(lake)
    taxonomy = read_lake_taxonomy(storage)
    pat = studio.personal_access_token()
    monkeypatch.setenv("LABEL_STUDIO_URL", studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    latest = read_latest(storage)
    review = set(latest.filter(latest["needs_review"])["product_id"].to_pylist())
    assert review, "the precision target leaves no tag to review"
    published = set(latest.filter(pc.equal(latest["source"], "model"))["product_id"].to_pylist()) - review
    sampled = min(2, len(published))  # a weak model may leave no product wholly auto-published

    t0 = time.monotonic()
    pushed = push_reviews(lake, sample=2)
    t_push = time.monotonic() - t0
    assert pushed.added == len(review) + sampled and pushed.per_reason["needs_review"] == len(review)
    again = push_reviews(lake, sample=2)
    assert again.added == 0 and again.already_there == pushed.added  # no duplicate tasks

    client = LabelStudio.from_env()
    project = find_project(client, taxonomy)
    tasks = sorted(client.export_tasks(project["id"]), key=lambda t: t["id"])
    assert len(tasks) == pushed.added
    assert tasks[0]["data"]["image"].startswith("data:image/jpeg;base64,")
    colours = list(taxonomy.attribute("colour").values)
    decided = {}
    t0 = time.monotonic()
    for i, task in enumerate(tasks[:4]):
        prediction = task["predictions"][0]
        if isinstance(prediction, int):  # the export lists a task's predictions by id
            prediction = client.request("GET", f"/api/predictions/{prediction}/").json()
        result = [dict(r, id=f"r{i}{j}") for j, r in enumerate(prediction["result"])]
        if i % 2:  # correct the colour; the others accepted as shown
            result = [r for r in result if r["from_name"] != "colour"]
            shown = (task["data"]["shown"].get("colour") or ["?"])[0]
            new = next(c for c in colours if c != shown)
            result.append({"id": f"c{i}", "from_name": "colour", "to_name": "image", "type": "choices",
                           "value": {"choices": [new]}})
        client.create_annotation(task["id"], result)
        decided[task["data"]["product_id"]] = {r["from_name"]: r["value"]["choices"] for r in result}
    t_annotate = time.monotonic() - t0

    t0 = time.monotonic()
    pulled = pull_reviews(lake)
    t_pull = time.monotonic() - t0
    print(f"label studio round trip: push {pushed.added} tasks {t_push:.1f} s, annotate 4 "
          f"{t_annotate:.1f} s, pull {t_pull:.1f} s")
    assert pulled.annotated == 4 and pulled.changed == pulled.corrections
    rows = read_corrections(storage).to_pylist()
    got = {(r["product_id"], r["attribute"]): r["values"] for r in rows}
    want = {(pid, a): v for pid, d in decided.items() for a, v in d.items()}
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}
    assert {r["reviewer"] for r in rows} == {studio.email}
    now = read_latest(storage)
    for (pid, attribute), values in want.items():
        mine = now.filter(pc.and_(pc.equal(now["product_id"], pid), pc.equal(now["attribute"], attribute)))
        assert sorted(mine["value"].to_pylist()) == sorted(values)
        assert set(mine["source"].to_pylist()) <= {"reviewed"}
    data = load_training_data(storage)
    for (pid, attribute), values in want.items():
        sl = taxonomy.slices[attribute]
        row = data.product_ids.index(pid)
        chosen = [v for v, t in zip(taxonomy.attribute(attribute).values, data.targets[row, sl]) if t]
        assert chosen == sorted(values, key=taxonomy.attribute(attribute).values.index)
    assert pull_reviews(lake).changed == 0  # idempotent
    assert pulled.feedback["overall"]["reviewed"] > 0

    # Bad input: a value outside the taxonomy refuses the whole pull, nothing written.
    before = storage.read_bytes(CORRECTIONS_PATH)
    bad = client.create_annotation(tasks[4]["id"], [{"id": "x", "from_name": "colour", "to_name": "image",
                                                     "type": "choices", "value": {"choices": ["purple"]}}])
    with pytest.raises(ReviewRefused, match=rf"^Task {tasks[4]['id']}: colour value 'purple' is not"):
        pull_reviews(lake)
    assert storage.read_bytes(CORRECTIONS_PATH) == before
    client.request("DELETE", f"/api/annotations/{bad['id']}")


def test_tokens_and_an_absent_server_are_one_line_errors(studio, trained_lake, monkeypatch):
    lake = str(trained_lake[0])
    monkeypatch.setenv("LABEL_STUDIO_URL", studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-a-token")
    with pytest.raises(ReviewRefused, match="refused the token in LABEL_STUDIO_API_KEY") as e:
        push_reviews(lake)
    assert "\n" not in str(e.value)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", studio.legacy_token)
    with pytest.raises(ReviewRefused, match="(?i)legacy token"):  # until the organisation allows them
        push_reviews(lake)
    studio.enable_legacy_tokens()
    assert push_reviews(lake).project_id > 0
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ReviewUnreachable, match="cannot be reached") as e:
        pull_reviews(lake)
    assert "\n" not in str(e.value)
    monkeypatch.delenv("LABEL_STUDIO_URL")
    with pytest.raises(ReviewRefused, match="^Set LABEL_STUDIO_URL in the environment"):
        pull_reviews(lake)
