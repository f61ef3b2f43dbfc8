"""Prefect artifacts: what a person wants to see in the UI after a run. Rendering only; the
numbers come from tagger (model card, IngestResult, TagResult, read_reject_counts)."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from catalog_schemas.card import ModelCard

from tagger.quality.report import render_card_markdown


def _f(x) -> float | None:
    return None if x is None else round(float(x), 4)


def publish_model(card: ModelCard) -> None:
    """The model report (markdown, key model-report), per-attribute metrics (table) and
    the per-epoch training figures (table training-curves)."""
    where = f"{card.data.lake}/models/{card.version}"
    md = (render_card_markdown(card) + f"\nStored at `{where}/`; training curves: `{where}/curves.png` "
          "(per epoch: table training-curves).\n")
    create_markdown_artifact(md, key="model-report", description=f"Model {card.version}")
    split, metrics = card.headline  # the test split's figures where the card has them
    rows = [dict(attribute=a, accuracy=_f(m.get("accuracy")), coverage=_f(m.get("coverage")),
                 top1=_f(m.get("top1_accuracy")), macro_f1=_f(m.get("macro_f1")), known=m.get("known"))
            for a, m in metrics["per_attribute"].items()]
    create_table_artifact(rows, key="model-metrics",
                          description=f"Per-attribute {split} metrics of model {card.version}")
    _publish_training_curves(card)


def _publish_training_curves(card: ModelCard) -> None:
    """The per-epoch figures (table training-curves); a markdown artifact cannot embed the
    lake's curves.png, so the description names it."""
    rows = [dict(epoch=h.epoch, train_loss=_f(h.train_loss), val_loss=_f(h.val_loss),
                 val_mAP=_f(h.val_mAP), val_accuracy=_f(h.val_accuracy), weights=h.weights,
                 registered=h.epoch == card.best_epoch, seconds=h.seconds,
                 **{f"accuracy_{a}": _f(v) for a, v in (h.val_attribute_accuracy or {}).items()})
            for h in card.history]
    create_table_artifact(rows, key="training-curves",
                          description=f"Per-epoch training figures of model {card.version} "
                          f"(registered: epoch {card.best_epoch or len(card.history)}); plots: "
                          f"{card.data.lake}/models/{card.version}/curves.png")


def publish_tagging(result: dict, rejects: dict) -> None:
    """Counts of a tag run, tags per attribute, the change against the previous latest
    snapshot, and the last ingest's rejects (markdown tag-summary, table tag-attributes)."""
    ch = result["changes"]
    lines = [
        f"# Tag run {result['run_id']}", "",
        f"Model **{result['model_version']}**: {result['tagged']} of {result['products']} "
        f"products tagged ({result['skipped']} unchanged, {result['removed']} removed from the "
        f"catalog); {result['latest_rows']} tags in `{result['latest_path']}`.", "",
        f"Against the previous run: **{ch['added']} tags added, {ch['removed']} removed**, "
        f"{ch['changed']} attribute values changed, on {ch['products_changed']} products.", "",
        "| attribute | tags | added | removed |", "|---|---|---|---|",
    ]
    attributes = sorted(set(result["tags_per_attribute"]) | set(ch["per_attribute"]))
    rows = []
    for a in attributes:
        delta = ch["per_attribute"].get(a, {"added": 0, "removed": 0})
        rows.append(dict(attribute=a, tags=result["tags_per_attribute"].get(a, 0), **delta))
        lines.append(f"| {a} | {rows[-1]['tags']} | {delta['added']} | {delta['removed']} |")
    lines += ["", f"## Rejects of the last ingest: {rejects['total']}", ""]
    if rejects["total"]:
        lines += ["| stage | reason | rows |", "|---|---|---|"]
        lines += [f"| {r['stage']} | {r['reason']} | {r['rows']} |" for r in rejects["by_reason"]]
        lines += ["", f"Details (row, product, what to fix): `{rejects['url']}`"]
    if (result.get("drift") or {}).get("warning"):
        lines += ["", "## Taxonomy drift", "", f"**Warning:** {result['drift']['warning']}"]
    create_markdown_artifact("\n".join(lines) + "\n", key="tag-summary",
                             description=f"Tag run {result['run_id']}")
    create_table_artifact(rows, key="tag-attributes", description="Tags per attribute and change")


def publish_promotion(version: str, markdown: str | None) -> None:
    """The promotion gate's comparison table and decision (markdown, key promotion)."""
    if markdown:
        create_markdown_artifact(markdown, key="promotion", description=f"Promotion of model {version}")


def publish_promoted(promotion: dict) -> None:
    """A promotion from the promote flow (markdown, key promotion)."""
    md = (f"# Production: {promotion['version']}\n\nPromoted {promotion['promoted_at']} by "
          f"{promotion['by']} ({promotion['rule']}; was {promotion['previous']}): "
          f"{promotion['reason'] or 'no reason given'}. The next tag run re-tags with it.\n")
    create_markdown_artifact(md, key="promotion", description=f"Promotion of model {promotion['version']}")


def render_ingest_summary(result: dict) -> str:
    """The markdown of an ingest run: counts, rejects by reason, where this run's rejects are."""
    lines = [
        f"# Ingest run {result['run_id']}", "",
        f"{result['rows']} rows of `{result['catalog']}` -> **{result['products']} products** "
        f"({result['new']} new, {result['changed']} changed, {result['removed']} removed); "
        f"{result['images_stored']} images stored"
        + (" (products table unchanged)" if not result["products_written"] else "") + "."
        + (f" {result['texts_truncated']} product texts were over the length limit and cut at a word."
           if result.get("texts_truncated") else ""), "",
        f"## Rejected rows: {result['rejected']}", "",
    ]
    if result.get("images_rejected"):
        lines += [f"{result['images_rejected']} images were left out of products ingested with "
                  "their other images (`product_kept` in the rejects).", ""]
    if result["reject_reasons"]:
        lines += ["| reason | rows |", "|---|---|"]
        lines += [f"| {r} | {n} |" for r, n in sorted(result["reject_reasons"].items(), key=lambda kv: -kv[1])]
        lines.append("")
    if result.get("rejects_history"):
        lines.append(f"This run's rejects (row, product, what to fix): `{result['rejects_history']}`")
    return "\n".join(lines) + "\n"


def publish_ingest(result: dict) -> None:
    """An ingest run's counts and rejects (markdown ingest-summary, table ingest-rejects)."""
    create_markdown_artifact(render_ingest_summary(result), key="ingest-summary",
                             description=f"Ingest run {result['run_id']}")
    create_table_artifact([dict(reason=r, rows=n) for r, n in result["reject_reasons"].items()],
                          key="ingest-rejects", description=f"Rejected rows by reason, {result['run_id']}")


def publish_review_push(result: dict) -> None:
    """What a review push added to Label Studio (markdown, key review-push)."""
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(result["per_reason"].items())) or "none"
    md = (f"# Review push\n\n**{result['added']} tasks added** to [{result['project_url']}]"
          f"({result['project_url']}) ({reasons}); {result['already_there']} products already had "
          f"a task for their image; {result['candidates']} products to review in all.\n")
    create_markdown_artifact(md, key="review-push", description="Tasks added to Label Studio")


def publish_review_pull(result: dict, report: str) -> None:
    """Accuracy from feedback (markdown review-feedback, table review-accuracy) and what the
    pull wrote."""
    skipped = "".join(f"- skipped {line}\n" for line in result["skipped"])
    md = (f"# Review pull {result['run_id']}\n\n{result['annotated']} of {result['tasks']} tasks "
          f"annotated; {result['corrections']} corrections ({result['changed']} new or changed), "
          f"{result['reviewed_tags']} reviewed tags in tags/latest.\n\n{skipped}\n" + report)
    create_markdown_artifact(md, key="review-feedback", description="Accuracy from feedback")
    create_table_artifact(result["feedback"]["per_value"], key="review-accuracy",
                          description="Share of reviewed model tags the reviewers kept, per value")
