"""`tagger review push`: products whose tags need a person, as Label Studio tasks.

A task per product with `needs_review` tags in tags/latest, optionally a random sample of
products whose tags were all auto-published (`sample`: measures the published tags too)
and the products of catalog/label_issues (`label_issues`). Each task carries the image, a
line saying why it is there, and the tags shown (the model's values and scores, or the
curated label of a label issue) as a pre-annotation the reviewer accepts or corrects.

Pushing twice adds no duplicate: a product that has a task for the same image already (open
or done) is not pushed again; a new image is a new task.

Images: an https image is linked as it is; an s3:// one by a presigned URL (valid
`image_expires_s`); any other (a local catalog) is the normalised JPEG from the lake's image
shard, embedded in the task as a data: URI (a few KB at ingest size), so a local lake needs
neither a file server nor Label Studio's local-files setting.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog_schemas.taxonomy import Taxonomy
from tagger.data.shards import ShardCache
from tagger.io.storage import Storage, open_file, open_storage
from tagger.lake import read_lake_taxonomy, read_latest, read_products
from tagger.review.client import LabelStudio
from tagger.review.issues import read_label_issues
from tagger.review.project import ensure_project

log = logging.getLogger(__name__)

IMPORT_BATCH = 500  # tasks per import request: bounded request bodies with embedded images
REASONS = ("needs_review", "label_issue", "sample")


@dataclass
class PushResult:
    project_id: int
    project_url: str
    candidates: int = 0
    added: int = 0
    already_there: int = 0
    per_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def select_products(latest: pa.Table, issues: pa.Table | None, sample: int, seed: int) -> dict[str, str]:
    """product id -> why it is pushed (REASONS order decides when several apply)."""
    chosen: dict[str, str] = {}
    for pid in pc.unique(latest.filter(latest["needs_review"])["product_id"]).to_pylist():
        chosen[pid] = "needs_review"
    if issues is not None:
        for pid in issues["product_id"].to_pylist():
            chosen.setdefault(pid, "label_issue")
    if sample:
        published = latest.filter(pc.equal(latest["source"], "model"))
        pool = sorted(set(pc.unique(published["product_id"]).to_pylist()) - set(chosen))
        rng = np.random.default_rng(seed)
        for pid in rng.choice(pool, size=min(sample, len(pool)), replace=False).tolist() if pool else []:
            chosen[pid] = "sample"
    return chosen


def _shown(rows: list[dict], issue_rows: list[dict], reason: str) -> tuple[dict, dict]:
    """({attribute: values shown}, {attribute: their scores, NaN for a curated value})."""
    values: dict[str, list[str]] = defaultdict(list)
    scores: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        values[r["attribute"]].append(r["value"])
        scores[r["attribute"]].append(math.nan if r["score"] is None else float(r["score"]))
    if reason == "label_issue":  # the curated label is what is judged: show it
        for i in issue_rows:
            values[i["attribute"]] = list(i["given"])
            scores[i["attribute"]] = [math.nan] * len(i["given"])
    return dict(values), dict(scores)


def _about(product: dict, reason: str, rows: list[dict], issue_rows: list[dict]) -> str:
    text = f"{product['product_id']} ({product['category'] or 'no category'})"
    if reason == "needs_review":
        unsure = sorted({f"{r['attribute']}={r['value']} {r['score']:.2f}" for r in rows if r["needs_review"]})
        return f"{text}: the model is unsure of {', '.join(unsure)}"
    if reason == "label_issue":
        said = ", ".join(f"{i['attribute']}: catalog says {'|'.join(i['given']) or 'none'}, model "
                         f"suggests {'|'.join(i['suggested']) or 'none'}" for i in issue_rows)
        return f"{text}: label probably wrong ({said})"
    return f"{text}: a sample of auto-published tags"


def image_url(storage: Storage, cache: ShardCache, product: dict, expires_s: int) -> str:
    """How the task shows the product's image (the module docstring's three cases)."""
    uri = product["image_uri"]
    if uri.startswith(("https://", "http://")):
        return uri
    if uri.startswith("s3://"):
        store, name = open_file(uri)
        url = store.presigned_url(name, expires_s)
        if url:
            return url
    data = cache.get(product["image_shard"], product["image_hash"])
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def build_task(taxonomy: Taxonomy, product: dict, reason: str, rows: list[dict], issue_rows: list[dict],
               image: str) -> dict:
    """One Label Studio task: data (image, ids, what is shown) and the pre-annotation."""
    values, scores = _shown(rows, issue_rows, reason)
    version = next((r["model_version"] for r in rows), None)
    known = {a.name for a in taxonomy.attributes}
    result = [{"from_name": attr, "to_name": "image", "type": "choices", "value": {"choices": vals}}
              for attr, vals in values.items() if attr in known and vals]
    model_scores = [s for ss in scores.values() for s in ss if not math.isnan(s)]
    data = dict(image=image, about=_about(product, reason, rows, issue_rows),
                product_id=product["product_id"], image_hash=product["image_hash"], reason=reason,
                model_version=version, shown=values,
                shown_scores={a: [None if math.isnan(s) else s for s in ss] for a, ss in scores.items()})
    prediction = dict(model_version=version or "catalog", result=result,
                      score=min(model_scores) if model_scores else 1.0)
    return {"data": data, "predictions": [prediction]}


def existing_keys(tasks: list[dict]) -> set[tuple[str, str]]:
    """(product id, image hash) of the project's tasks."""
    return {(t["data"].get("product_id"), t["data"].get("image_hash")) for t in tasks
            if isinstance(t.get("data"), dict)}


def push_reviews(lake: str, *, label_issues: bool = False, sample: int = 0, seed: int = 0,
                 limit: int | None = None, client: LabelStudio | None = None,
                 image_expires_s: int = 14 * 86400) -> PushResult:
    """Create or update the taxonomy's project and add a task per product to review that
    has none for its current image (`limit`: at most that many new tasks)."""
    t0 = time.perf_counter()
    client = client or LabelStudio.from_env()
    storage = open_storage(lake)
    taxonomy = read_lake_taxonomy(storage)
    latest = read_latest(storage)
    issues = read_label_issues(storage) if label_issues else None
    chosen = select_products(latest, issues, sample, seed)
    project = ensure_project(client, taxonomy)
    result = PushResult(project["id"], client.project_url(project["id"]), candidates=len(chosen))
    have = existing_keys(client.export_tasks(project["id"]))

    products = read_products(storage)
    products = products.filter(pc.is_in(products["product_id"], value_set=pa.array(list(chosen), pa.string())))
    rows = _group(latest.filter(pc.is_in(latest["product_id"], value_set=products["product_id"])))
    issue_rows = _group(issues) if issues is not None else {}
    cache, tasks = ShardCache(lake), []
    for p in products.sort_by("product_id").to_pylist():
        if (p["product_id"], p["image_hash"]) in have:
            result.already_there += 1
            continue
        if limit is not None and len(tasks) >= limit:
            break
        reason = chosen[p["product_id"]]
        tasks.append(build_task(taxonomy, p, reason, rows.get(p["product_id"], []),
                                issue_rows.get(p["product_id"], []),
                                image_url(storage, cache, p, image_expires_s)))
        result.per_reason[reason] = result.per_reason.get(reason, 0) + 1
    for start in range(0, len(tasks), IMPORT_BATCH):
        result.added += client.import_tasks(project["id"], tasks[start:start + IMPORT_BATCH])
    result.seconds = round(time.perf_counter() - t0, 2)
    log.info("review push: %d tasks added to %s (%d products already there, %d candidates)",
             result.added, result.project_url, result.already_there, result.candidates)
    return result


def _group(table: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in table.to_pylist():
        out[r["product_id"]].append(r)
    return out
