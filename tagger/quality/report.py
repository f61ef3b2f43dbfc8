"""Metrics as Markdown: the model report (report.md, the Prefect artifact) and evaluations."""

from __future__ import annotations

from catalog_schemas.card import ModelCard


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _overall(m: dict) -> list[str]:
    return ["| micro-F1 | macro-F1 | mAP | Hamming loss |", "|---|---|---|---|",
            f"| {_f(m['micro_f1'])} | {_f(m['macro_f1'])} | {_f(m['mAP'])} | {_f(m['hamming_loss'])} |",
            "", f"_{m.get('split', '')}_" if m.get("split") else ""]


def _per_attribute(m: dict, kinds: dict[str, str]) -> list[str]:
    lines = ["| attribute | kind | accuracy | coverage | top-1 | macro-F1 | products with a label |",
             "|---|---|---|---|---|---|---|"]
    for attr, am in m["per_attribute"].items():
        lines.append(f"| {attr} | {kinds.get(attr, '')} | {_f(am.get('accuracy'))} | "
                     f"{_f(am.get('coverage'))} | {_f(am.get('top1_accuracy'))} | "
                     f"{_f(am.get('macro_f1'))} | {am.get('known', '-')} |")
    return lines


def render_tuned_on(metrics: dict, kinds: dict[str, str]) -> str:
    """A section with the validation split's figures, marked as the split the thresholds and
    temperatures were tuned on (so its F1 figures are optimistic), for beside the test's."""
    lines = ["", "## Validation split (tuned on it: F1 figures are optimistic)", "",
             *_overall(metrics), "", *_per_attribute(metrics, kinds)]
    return "\n".join(lines) + "\n"


def render_metrics_markdown(title: str, intro: str, metrics: dict, thresholds: dict,
                            kinds: dict[str, str], *, images: dict[str, str] | None = None,
                            worst: int = 10, auto_thresholds: dict | None = None) -> str:
    """Overall figures, a table per attribute, the weakest values; `images` maps a caption
    to a relative PNG path to embed."""
    m = metrics
    lines = [
        f"# {title}", "", intro, "", *_overall(m),
        "## Per attribute", "",
        "Single attributes: *accuracy* counts abstentions (no value passed its threshold) as "
        "wrong; *top-1* always takes the highest-scoring value, as single-label classifiers "
        "are usually scored.", "", *_per_attribute(m, kinds),
    ]
    if m.get("calibration"):
        c = m["calibration"]
        temps = ", ".join(f"{a} {t:.2f}" for a, t in (c.get("temperature") or {}).items())
        lines += ["", "## Calibration", "",
                  f"Expected calibration error (15 bins, all known entries): "
                  f"**{_f(c['ece_before'])}** uncalibrated, **{_f(c['ece_after'])}** with "
                  f"temperature scaling" + (f" (T per attribute: {temps})." if temps else " (off).")]
    if m.get("review"):
        r = m["review"]
        lines += ["", f"## Auto-publish and review (precision target {_f(r.get('min_precision'))})", "",
                  "| decisions | auto-published | their precision | needs review | their precision |",
                  "|---|---|---|---|---|",
                  f"| {r['decisions']} | {_f(r['auto_share'])} | {_f(r['auto_precision'])} | "
                  f"{_f(r['review_share'])} | {_f(r['review_precision'])} |"]
    values = [(attr, v, vm) for attr, vals in m["per_value"].items() for v, vm in vals.items()
              if vm["support"]]
    values.sort(key=lambda t: (t[2]["f1"], -t[2]["support"]))
    lines += ["", f"## Weakest {min(worst, len(values))} values (F1)", "",
              "| attribute | value | precision | recall | F1 | AP | support | threshold | auto-publish from |",
              "|---|---|---|---|---|---|---|---|---|"]
    for attr, v, vm in values[:worst]:
        thr = thresholds.get(attr, {}).get(v)
        auto = (auto_thresholds or {}).get(attr, {}).get(v)
        auto_cell = ("never" if auto is None else _f(auto)) if auto_thresholds else "-"
        lines.append(f"| {attr} | {v} | {_f(vm['precision'])} | {_f(vm['recall'])} | {_f(vm['f1'])} "
                     f"| {_f(vm['ap'])} | {vm['support']} | {_f(thr)} | {auto_cell} |")
    for caption, path in (images or {}).items():
        lines += ["", f"## {caption}", "", f"![{caption}]({path})"]
    return "\n".join(lines) + "\n"


def card_summary(card: ModelCard) -> str:
    """One sentence: what was trained, on what, where, how long."""
    tested = f", tested on {card.data.test} no choice was made on" if card.data.test else ""
    return (
        f"Backbone **{card.backbone}** at {card.image_size} px, trained on "
        f"{card.data.train} products, validated on {card.data.validation}{tested} "
        f"(data snapshot `{card.data.snapshot}`) in {card.training.seconds:.0f} s "
        f"on {card.training.device} x{card.training.world_size}."
        + (" Scored with horizontal-flip TTA (2 passes per image)." if card.tta == "flip" else "")
    )


def render_card_markdown(card: ModelCard, *, images: dict[str, str] | None = None) -> str:
    """The card's report: the test split's figures first, where there are any, then the
    validation split's, marked as tuned on."""
    kinds = {a.name: a.kind for a in card.taxonomy.attributes}
    _, metrics = card.headline
    md = render_metrics_markdown(f"Model {card.version}", card_summary(card), metrics,
                                 card.thresholds, kinds, images=images,
                                 auto_thresholds=card.auto_thresholds)
    return md + (render_tuned_on(card.metrics, kinds) if card.test_metrics is not None else "")


def render_training_curves(card: ModelCard, image: str) -> str:
    """A section embedding the training curves PNG at the relative path `image`, saying
    which epoch was registered."""
    best = card.best_epoch
    chosen = next((h for h in card.history if h.epoch == best), None)
    which = (f"Epoch **{best}** of {len(card.history)} had the highest validation mAP "
             f"({_f(chosen.val_mAP)}, {chosen.weights or 'raw'} weights): its weights are registered."
             if chosen is not None and chosen.val_mAP is not None
             else "No per-epoch validation: the last epoch's weights are registered.")
    return "\n".join(["", "## Training curves", "", which, "", f"![Training curves]({image})"]) + "\n"
