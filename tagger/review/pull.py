"""`tagger review pull`: reviewers' decisions from Label Studio into catalog/corrections/.

Every task's latest submitted annotation becomes one CORRECTIONS row per attribute it
decides: the values chosen (a `multi` attribute that was shown and left with no choice:
none of its values; an attribute left empty otherwise: not decided). The table is merged
(tagger.corrections.merge_corrections: a later decision replaces an earlier one, the same
decision pulled again changes nothing) and written in one atomic commit; then the winning
corrections are written into tags/latest as source='reviewed' rows (and one history file
for the pull), so they show at once, not at the next tag run.

Refused as a whole, nothing written, with one line naming the task: an annotation with a
value or attribute the taxonomy does not have, a `single` attribute with several values.
Skipped, and listed in the result: a task whose product has left the catalog (nothing is
left to correct), an attribute that does not apply to the product's category.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from catalog_schemas.tables import CORRECTIONS, TAG_HISTORY, TAG_LATEST
from catalog_schemas.taxonomy import Taxonomy
from tagger.corrections import Corrections, merge_corrections, read_corrections, write_corrections
from tagger.io.lock import lake_lock
from tagger.io.storage import Storage, open_storage, write_table
from tagger.lake import CORRECTIONS_PATH, LATEST_PATH, history_path, read_lake_taxonomy, read_latest, read_products
from tagger.review.client import LabelStudio, ReviewRefused
from tagger.review.feedback import compute_feedback, render_feedback
from tagger.review.project import find_project, project_title
from tagger.tag.rows import TAG_ORDER

log = logging.getLogger(__name__)

FEEDBACK_PATH = "catalog/corrections/feedback.md"


@dataclass
class PullResult:
    run_id: str
    project_id: int
    tasks: int = 0
    annotated: int = 0
    corrections: int = 0  # rows of the corrections table after the pull
    changed: int = 0  # rows the pull added or replaced
    reviewed_tags: int = 0  # source='reviewed' rows written into tags/latest
    skipped: list[str] = field(default_factory=list)
    feedback: dict = field(default_factory=dict)
    report_path: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _when(text: str | None) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(timezone.utc)


def _latest_annotation(task: dict) -> dict | None:
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return max(done, key=lambda a: a.get("updated_at") or a.get("created_at") or "", default=None)


def _decided(taxonomy: Taxonomy, task: dict, annotation: dict) -> dict[str, list[str]]:
    """attribute -> values an annotation decides; ReviewRefused for what the taxonomy lacks."""
    chosen: dict[str, list[str]] = {}
    for item in annotation.get("result") or []:
        if item.get("type") != "choices":
            continue
        name = item.get("from_name")
        try:
            attr = taxonomy.attribute(name)
        except KeyError as e:
            raise ReviewRefused(f"Task {task['id']}: {e.args[0]} (the project's labelling config "
                                "is older than the taxonomy: push again, then fix the task)") from None
        values = list(item.get("value", {}).get("choices", []))
        unknown = [v for v in values if v not in attr.values]
        if unknown:
            raise ReviewRefused(f"Task {task['id']}: {attr.name} value {unknown[0]!r} is not in the "
                                f"taxonomy. Known: {', '.join(attr.values)}. Fix the annotation in "
                                "Label Studio, then pull again.")
        if attr.kind == "single" and len(values) != 1:
            raise ReviewRefused(f"Task {task['id']}: {attr.name} is single-choice but the annotation "
                                f"has {len(values)} values: {values}")
        chosen[attr.name] = sorted(set(values), key=attr.values.index)
    for name in (task["data"].get("shown") or {}):  # a shown multi attribute cleared: none
        if name not in chosen and name in taxonomy.slices and taxonomy.attribute(name).kind == "multi":
            chosen[name] = []
    return chosen


def corrections_from_tasks(taxonomy: Taxonomy, tasks: list[dict], products: dict[str, dict],
                           reviewer, project_id: int, run_id: str) -> tuple[pa.Table, list[str], int]:
    """(CORRECTIONS rows, skipped lines, annotated tasks) of an export's tasks."""
    rows, skipped, annotated = [], [], 0
    for task in tasks:
        annotation = _latest_annotation(task)
        if annotation is None:
            continue
        annotated += 1
        data = task["data"]
        pid = data.get("product_id")
        decided = _decided(taxonomy, task, annotation)  # refuses bad values even if skipped below
        if pid not in products:
            skipped.append(f"task {task['id']}: product {pid} is no longer in the catalog")
            continue
        category = products[pid]["category"]
        for attribute, values in decided.items():
            if not taxonomy.attribute(attribute).applies_to(category):
                skipped.append(f"task {task['id']}: {attribute} does not apply to {pid} ({category})")
                continue
            shown = list((data.get("shown") or {}).get(attribute, []))
            scores = list((data.get("shown_scores") or {}).get(attribute, []))
            rows.append(dict(
                product_id=pid, attribute=attribute, values=values, shown=shown,
                shown_scores=[math.nan if s is None else float(s) for s in scores][:len(shown)]
                + [math.nan] * max(0, len(shown) - len(scores)),
                model_version=data.get("model_version"), reviewer=reviewer(annotation.get("completed_by")),
                reviewed_at=_when(annotation.get("updated_at") or annotation.get("created_at")),
                task=f"{project_id}/{task['id']}", reason=data.get("reason") or "needs_review",
                pull_run_id=run_id))
    return pa.Table.from_pylist(rows, schema=CORRECTIONS), skipped, annotated


def pull_reviews(lake: str, *, client: LabelStudio | None = None, run_id: str | None = None) -> PullResult:
    """Pull the decisions, merge them into the corrections table, write the reviewed tags
    and the feedback report (accuracy of the tags reviewers saw)."""
    t0 = time.perf_counter()
    client = client or LabelStudio.from_env()
    run_id = run_id or f"pull-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    storage = open_storage(lake)
    taxonomy = read_lake_taxonomy(storage)
    project = find_project(client, taxonomy)
    if project is None:
        raise ReviewRefused(f"No Label Studio project {project_title(taxonomy)!r} at {client.url}: "
                            f"push first (tagger review push --lake {lake}).")
    tasks = client.export_tasks(project["id"])
    products = {p["product_id"]: p for p in read_products(storage).select(
        ["product_id", "category", "image_hash", "updated_at"]).to_pylist()}
    new, skipped, annotated = corrections_from_tasks(taxonomy, tasks, products, client.user_name,
                                                     project["id"], run_id)
    result = PullResult(run_id, project["id"], len(tasks), annotated, skipped=skipped)
    for line in skipped:
        log.warning("review pull: skipped %s", line)
    with lake_lock(storage, "catalog", owner=run_id):
        previous = read_corrections(storage)
        merged = merge_corrections(previous, new)
        result.changed = _changed(previous, merged)
        if result.changed or not storage.exists(CORRECTIONS_PATH):
            write_corrections(storage, merged)
    result.corrections = merged.num_rows
    with lake_lock(storage, "tags", owner=run_id):
        result.reviewed_tags = write_reviewed_tags(storage, taxonomy, merged, products, run_id)
    result.feedback = compute_feedback(merged)
    storage.write_bytes(FEEDBACK_PATH, render_feedback(result.feedback).encode())
    result.report_path = storage.url(FEEDBACK_PATH)
    result.seconds = round(time.perf_counter() - t0, 2)
    log.info("review pull: %d annotated of %d tasks, %d corrections (%d changed), %d reviewed tags",
             annotated, len(tasks), result.corrections, result.changed, result.reviewed_tags)
    return result


def _changed(previous: pa.Table, merged: pa.Table) -> int:
    """Rows of `merged` that `previous` does not hold as they are (pull_run_id aside)."""
    cols = [c for c in CORRECTIONS.names if c not in ("pull_run_id", "shown_scores")]

    def keyed(t: pa.Table) -> set:
        return {tuple(tuple(v) if isinstance(v, list) else v for v in row.values())
                for row in t.select(cols).to_pylist()}

    return len(keyed(merged) - keyed(previous))


def write_reviewed_tags(storage: Storage, taxonomy: Taxonomy, corrections: pa.Table,
                        products: dict[str, dict], run_id: str) -> int:
    """Replace the tags/latest rows of every winning correction's (product, attribute) by
    its values as source='reviewed' rows; the number of such rows. Latest is rewritten (and a
    history file for the run written) only when that changes it."""
    latest = read_latest(storage)
    winners = Corrections.from_table(corrections)
    now = datetime.now(timezone.utc)
    versions = dict(zip(latest["product_id"].to_pylist(), latest["model_version"].to_pylist()))
    decided, new_rows = set(), []
    for pid, by_attr in winners.by_product.items():
        product = products.get(pid)
        if product is None:
            continue
        _, reviewed = winners.apply(pid, {}, product["updated_at"])
        for attribute in sorted(reviewed):
            if attribute not in taxonomy.slices:
                continue
            decided.add((pid, attribute))
            new_rows += [dict(product_id=pid, attribute=attribute, value=v, score=None, source="reviewed",
                              image_hash=product["image_hash"], needs_review=False,
                              model_version=versions.get(pid) or "none", run_id=run_id, tagged_at=now)
                         for v in by_attr[attribute].values]
    pairs = zip(latest["product_id"].to_pylist(), latest["attribute"].to_pylist())
    drop = pa.array([pair in decided for pair in pairs], pa.bool_())
    replaced = latest.filter(drop)
    fresh = pa.Table.from_pylist(new_rows, schema=TAG_LATEST)
    if _same_tags(replaced, fresh):
        return fresh.num_rows
    kept = latest.filter(pc.invert(drop))
    table = pa.concat_tables([kept, fresh]).sort_by(TAG_ORDER)
    write_table(storage, history_path(now.date().isoformat(), run_id), fresh.cast(TAG_HISTORY))
    write_table(storage, LATEST_PATH, table.replace_schema_metadata(
        {**TAG_LATEST.metadata, "run_id": run_id}))
    return fresh.num_rows


def _same_tags(old: pa.Table, new: pa.Table) -> bool:
    def rows(t: pa.Table) -> set:
        return set(zip(*(t[c].to_pylist() for c in ("product_id", "attribute", "value", "source"))))

    return old.num_rows == new.num_rows and rows(old) == rows(new)
