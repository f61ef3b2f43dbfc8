"""The promotion gate: after a version is registered, is it at least as good as production?

Data. Both models score the same labelled products, neither trained on them:
- the lake's evaluation set where it has one (`tagger evaluate --name`, under
  `evaluations/<name>/`: an export ingested apart from the catalog; with several, the one
  ingested last), without any product that is also in the catalog's labelled products (either
  model may have trained on those). It is fixed across retrains, so decisions are comparable.
- else the candidate's test split: held out from the candidate's training and from every
  choice made on it. Production never tuned on it either, and when production was trained on
  the same data snapshot with the same split settings its test split is this one. When not,
  production may have trained on some of these products: its figures are then optimistic, so
  the gate is stricter on the candidate, never laxer. The table says which case it was.

Metric. Average precision per attribute value (scores against labels, no threshold: thresholds
tuned on two different validation splits add noise, not signal), averaged over the values both
models have: overall (mAP) and per attribute. The candidate passes when neither is lower than
production's by more than `promote_margin`, and when its decisions are not worse beyond luck: a
paired bootstrap of the products (tagger.quality.compare) gives the mean accuracy of the
`single` attributes with a 95% interval and the candidate's lead, and a lead whose whole
interval lies below -`promote_margin` fails it (ranking no worse while the tags it would write
are wrong more often). A lead whose interval holds -margin is left to mAP: these products
cannot tell it from luck. Macro-F1 at each model's own thresholds is shown, not gated on.
Both models are scored by the pipeline that tags (tagger.model.scoring).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog_schemas.card import ModelCard
from catalog_schemas.tables import PRODUCTS
from catalog_schemas.taxonomy import Taxonomy
from tagger.config import TagConfig, TrainConfig
from tagger.io.storage import Storage, open_storage, read_table
from tagger.labels import encode_labels
from tagger.lake import EVALUATIONS, PRODUCTS_DEFAULTS, PRODUCTS_PATH, model_path, read_products
from tagger.model.production import (
    FIRST_MODEL,
    GATE,
    PromotionConflict,
    adopt_newest,
    default_by,
    promote,
    read_production,
)
from tagger.model.scoring import card_arrays, score_images
from tagger.model.versions import list_versions, load_model, read_card
from tagger.quality.compare import choices_from_arrays, compare_choices
from tagger.quality.evaluation import compute_evaluation

log = logging.getLogger(__name__)

PROMOTION_REPORT = "promotion.md"


@dataclass(frozen=True)
class EvaluationSet:
    """Labelled products both models are scored on, and where their images are."""

    description: str  # for the table: which set and why it is fair
    lake: str  # the lake whose image shards hold the images
    products: list[dict]  # PRODUCTS rows


@dataclass(frozen=True)
class Comparison:
    """The gate's figures and verdict (compare_metrics)."""

    rows: list[dict]  # attribute ('all' first), candidate, production, change, values, ok, F1s
    passed: bool
    reason: str
    bootstrap: dict | None = None  # tagger.quality.compare's, candidate first (accuracy_rule)


@dataclass(frozen=True)
class Scored:
    """One model's figures on an evaluation set (score_metrics)."""

    metrics: dict  # compute_metrics
    choices: dict  # tagger.quality.compare.choices_from_arrays: label and choice per single attribute
    taxonomy: Taxonomy


@dataclass(frozen=True)
class GateResult:
    """What the gate decided for a candidate, and the Markdown table that says why."""

    candidate: str
    production: str | None  # production after the gate
    promoted: bool
    reason: str
    markdown: str

    def to_dict(self) -> dict:
        return asdict(self)


def _value_aps(metrics: dict) -> dict[tuple[str, str], float]:
    return {(a, v): m["ap"] for a, values in metrics["per_value"].items()
            for v, m in values.items() if m.get("ap") is not None}


def _row(attribute: str, keys: list, cand: dict, prod: dict, margin: float, f1: tuple) -> dict:
    c, p = float(np.mean([cand[k] for k in keys])), float(np.mean([prod[k] for k in keys]))
    return dict(attribute=attribute, candidate=round(c, 4), production=round(p, 4),
                change=round(c - p, 4), values=len(keys), ok=bool(c - p >= -margin - 1e-9),
                candidate_macro_f1=f1[0], production_macro_f1=f1[1])


def compare_metrics(candidate: dict, production: dict, margin: float) -> Comparison:
    """Gate verdict from two compute_metrics results on the same products: mAP over the
    (attribute, value) pairs with an AP in both, overall and per attribute, each no lower
    than production's by more than `margin`."""
    cand, prod = _value_aps(candidate), _value_aps(production)
    common = [k for k in cand if k in prod]
    if not common:
        return Comparison([], False, "no attribute value has a labelled positive and negative in "
                          "the evaluation data for both models: nothing to compare on")
    f1 = lambda m, a: (m["per_attribute"].get(a) or {}).get("macro_f1")  # noqa: E731
    rows = [_row("all", common, cand, prod, margin, (candidate["macro_f1"], production["macro_f1"]))]
    for attribute in dict.fromkeys(a for a, _ in common):
        keys = [k for k in common if k[0] == attribute]
        rows.append(_row(attribute, keys, cand, prod, margin,
                         (f1(candidate, attribute), f1(production, attribute))))
    worse = [r for r in rows if not r["ok"]]
    if worse:
        return Comparison(rows, False, f"worse than production by more than {margin:g} in mAP: "
                          + "; ".join(f"{r['attribute']} {r['candidate']:.3f} vs {r['production']:.3f}"
                                      for r in worse))
    return Comparison(rows, True, f"mAP {rows[0]['candidate']:.3f} vs {rows[0]['production']:.3f}: "
                      f"not worse than production by more than {margin:g}, overall or on any attribute")


def _labels_for(tax: Taxonomy, products: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Targets and mask in `tax`'s outputs; values it does not have are dropped (known, and
    none of its values: what the model should then answer)."""
    values = {a.name: set(a.values) for a in tax.attributes}
    labels = [{a: [v for v in vs if v in values[a]] for a, vs in dict(p["labels"]).items() if a in values}
              for p in products]
    return encode_labels(tax, labels, [p["category"] for p in products])


def score_metrics(storage: Storage, version: str, es: EvaluationSet, config: TagConfig) -> Scored:
    """compute_metrics of a registered version on an evaluation set, scored as a tag run
    scores, decided at the card's thresholds, with each product's choices."""
    model, card = load_model(storage, version)
    targets, mask = _labels_for(card.taxonomy, es.products)
    scored = score_images(model, card, es.lake, [p["image_shard"] for p in es.products],
                          [p["image_hash"] for p in es.products], config, desc=f"gate {version}",
                          texts=[p.get("text") for p in es.products],
                          more=[p.get("more_images") for p in es.products])
    arrays = card_arrays(card)
    decisions, metrics = compute_evaluation(card.taxonomy, targets, mask, scored.scores, arrays.thresholds,
                                            argmax_slices=arrays.softmax_slices)
    return Scored(metrics, choices_from_arrays(card.taxonomy, targets, mask, decisions), card.taxonomy)


def compare_scored(candidate: Scored, production: Scored, names: tuple[str, str], margin: float) -> Comparison:
    """compare_metrics, with the paired bootstrap of the two where they share a taxonomy
    and a known `single` value (else none: their choices are not the same question)."""
    comparison = compare_metrics(candidate.metrics, production.metrics, margin)
    if candidate.taxonomy.outputs != production.taxonomy.outputs:
        return comparison
    try:
        bootstrap = compare_choices(dict(zip(names, (candidate.choices, production.choices))),
                                    candidate.taxonomy, names[0])
    except ValueError as e:  # no known single value (or no single attribute): the mAP table stands alone
        log.info("promotion gate: no paired bootstrap (%s)", e)
        return comparison
    return accuracy_rule(replace(comparison, bootstrap=bootstrap), names, margin)


def accuracy_rule(comparison: Comparison, names: tuple[str, str], margin: float) -> Comparison:
    """`comparison` failed too where its bootstrap says the candidate (names[0]) is less
    accurate than production (names[1]) by more than `margin` beyond luck: the whole 95%
    interval of its lead in mean accuracy below -margin."""
    lead = comparison.bootstrap["models"][names[1]][f"{names[0]} lead, accuracy"]
    low, high = lead["interval"]
    if high >= -margin - 1e-9:
        return comparison
    why = (f"mean accuracy of the single attributes lower than production's by more than "
           f"{margin:g} beyond luck: lead {lead['difference']:+.3f} [{low:+.3f}, {high:+.3f}] "
           f"(95% paired bootstrap)")
    return replace(comparison, passed=False,
                   reason=why if comparison.passed else f"{comparison.reason}; {why}")


def _newest_evaluation_set(storage: Storage) -> str | None:
    """The name of the evaluation set ingested last, or None."""
    suffix = "/" + PRODUCTS_PATH
    names = {p[len(EVALUATIONS) + 1:-len(suffix)] for p in storage.list(EVALUATIONS) if p.endswith(suffix)}
    newest = {n: pc.max(read_table(storage, f"{EVALUATIONS}/{n}/{PRODUCTS_PATH}", PRODUCTS,
                                   defaults=PRODUCTS_DEFAULTS)["updated_at"]).as_py()
              for n in names}
    newest = {n: t for n, t in newest.items() if t is not None}
    return max(newest, key=lambda n: (newest[n], n)) if newest else None


def choose_evaluation_set(storage: Storage, catalog_ids: list[str], test_ids: list[str],
                          production: ModelCard, candidate: ModelCard) -> EvaluationSet:
    """The lake's evaluation set (minus catalog products) where it has one, else the
    candidate's test split, with a description that says how fair it is (module docstring)."""
    name = _newest_evaluation_set(storage)
    if name is not None:
        eval_lake = storage.url(f"{EVALUATIONS}/{name}")
        table = read_products(open_storage(eval_lake))
        kept = table.filter(pc.invert(pc.is_in(table["product_id"], value_set=pa.array(catalog_ids, pa.string()))))
        if kept.num_rows:
            dropped = table.num_rows - kept.num_rows
            return EvaluationSet(
                f"evaluation set `{name}` ({EVALUATIONS}/{name}/: ingested apart from the catalog"
                + (f"; {dropped} products also in the catalog left out" if dropped else "") + ")",
                eval_lake, kept.to_pylist())
    products = read_products(storage)
    test = products.filter(pc.is_in(products["product_id"], value_set=pa.array(test_ids, pa.string())))
    keys = ("seed", "val_fraction", "test_fraction")
    same = (production.data.snapshot == candidate.data.snapshot
            and all(production.config.get(k) == candidate.config.get(k) for k in keys))
    fairness = ("production was trained on the same data with the same split: neither model "
                "trained or tuned on these products" if same else
                "production was trained on other data or another split and may have trained on some "
                "of these products: its figures may be optimistic, so the gate is stricter, never laxer")
    return EvaluationSet(f"the candidate's test split ({fairness})", storage.uri, test.to_pylist())


def render_gate(candidate: str, production: str | None, evaluated_on: str, products: int,
                comparison: Comparison | None, margin: float, decision: str) -> str:
    """The comparison table and the decision, as Markdown."""
    lines = ["## Promotion", ""]
    if comparison is not None:
        lines += [f"Candidate **{candidate}** against production **{production}** on {evaluated_on}: "
                  f"{products} labelled products. Gated on mAP (average precision per value, mean "
                  f"over the values both models have), overall and per attribute, margin "
                  f"{margin:g}, and on mean accuracy below; macro-F1 at each model's thresholds "
                  f"is shown, not gated on.", "",
                  "| attribute | values | candidate mAP | production mAP | change | candidate macro-F1 "
                  "| production macro-F1 | within margin |", "|---|---|---|---|---|---|---|---|"]
        f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        for r in comparison.rows:
            lines.append(f"| {r['attribute']} | {r['values']} | {f(r['candidate'])} | {f(r['production'])} "
                         f"| {r['change']:+.3f} | {f(r['candidate_macro_f1'])} | "
                         f"{f(r['production_macro_f1'])} | {'yes' if r['ok'] else '**no**'} |")
        lines.append("")
        if comparison.bootstrap:
            lines += [_bootstrap_line(comparison.bootstrap, candidate, production), ""]
    lines.append(f"**Decision:** {decision}")
    return "\n".join(lines) + "\n"


def _bootstrap_line(bootstrap: dict, candidate: str, production: str) -> str:
    ours, theirs = bootstrap["models"][candidate], bootstrap["models"][production]
    lead = theirs[f"{candidate} lead, accuracy"]
    span = lambda iv: f"[{iv[0]:.3f}, {iv[1]:.3f}]"  # noqa: E731
    return (f"Mean accuracy of the `single` attributes (gated on: a lead whose whole interval "
            f"lies below minus the margin fails): candidate "
            f"{ours['mean_accuracy']:.3f} {span(ours['mean_accuracy_interval'])}, production "
            f"{theirs['mean_accuracy']:.3f} {span(theirs['mean_accuracy_interval'])}; the candidate's "
            f"lead {lead['difference']:+.3f} [{lead['interval'][0]:+.3f}, {lead['interval'][1]:+.3f}], "
            f"ahead in {100 * lead['ahead_share']:.0f}% of {bootstrap['resamples']:,} resamples of these "
            f"products (95% intervals of a paired bootstrap; an interval that holds 0 is a lead these "
            f"products cannot tell from luck).")


def gate_candidate(lake: str, version: str, config: TrainConfig, catalog_ids: list[str],
                   test_ids: list[str]) -> GateResult:
    """Compare a just-registered version with production and promote it when it passes and
    `config.promote` is auto; the lake's first model is promoted as it is. The table goes to
    models/<version>/promotion.md and the end of its report.md."""
    storage = open_storage(lake)
    by = f"train ({default_by()})"
    current = read_production(storage)
    production = current.version if current else None
    if production is None:
        others = [v for v in list_versions(storage) if v != version]
        if not others:
            return _first_model(storage, version, by)
        production = adopt_newest(storage, others, by=by)  # a lake from before promotions
    es = choose_evaluation_set(storage, catalog_ids, test_ids, read_card(storage, production),
                               read_card(storage, version))
    scoring = TagConfig(device=config.device, batch_size=config.batch_size, workers=config.workers,
                        runtime="torch")
    comparison = None
    if es.products:
        comparison = compare_scored(score_metrics(storage, version, es, scoring),
                                    score_metrics(storage, production, es, scoring), (version, production),
                                    config.promote_margin)
    promoted, decision = _decide(storage, version, production, comparison, config, by)
    md = render_gate(version, production, es.description, len(es.products), comparison,
                     config.promote_margin, decision)
    _store(storage, version, md)
    log.info("promotion gate for %s: %s", version, decision)
    return GateResult(version, version if promoted else production, promoted, decision, md)


def _first_model(storage: Storage, version: str, by: str) -> GateResult:
    reason = "the lake's first model, promoted without a comparison (there is none to compare with)"
    try:
        promote(storage, version, by=by, rule=FIRST_MODEL, reason=reason, expect=None)
        promoted, decision = True, f"promoted to production: {reason}"
    except PromotionConflict as e:  # another run promoted a version meanwhile
        promoted, decision = False, f"kept as a candidate: {e}"
    md = render_gate(version, None, "", 0, None, 0, decision)
    _store(storage, version, md)
    current = read_production(storage)
    return GateResult(version, current.version if current else None, promoted, decision, md)


def _decide(storage: Storage, version: str, production: str, comparison: Comparison | None,
            config: TrainConfig, by: str) -> tuple[bool, str]:
    """(promoted, the decision in words)."""
    if comparison is None:
        return False, (f"kept as a candidate; production stays {production}: no labelled products to "
                       f"compare on (no evaluation set, no test split). Promote by hand after "
                       f"`tagger evaluate`: tagger promote {version} --lake {storage.uri}")
    if not comparison.passed:
        return False, f"kept as a candidate; production stays {production}: {comparison.reason}"
    if config.promote == "manual":
        return False, (f"kept as a candidate (promote: manual), although it passed the gate "
                       f"({comparison.reason}): tagger promote {version} --lake {storage.uri}")
    try:
        promote(storage, version, by=by, rule=GATE, reason=comparison.reason, expect=production)
    except PromotionConflict as e:
        return False, f"kept as a candidate: {e}"
    return True, f"promoted to production (was {production}): {comparison.reason}"


def _store(storage: Storage, version: str, markdown: str) -> None:
    """promotion.md next to the card, and the same section at the end of report.md."""
    storage.write_bytes(model_path(version, PROMOTION_REPORT), markdown.encode())
    report = model_path(version, "report.md")
    if storage.exists(report):
        storage.write_bytes(report, storage.read_bytes(report).rstrip() + b"\n\n" + markdown.encode())
    log.info("wrote the promotion decision to %s", storage.url(model_path(version, PROMOTION_REPORT)))


def read_gate_report(storage: Storage, version: str) -> str | None:
    """The promotion section the gate stored with a version (None: never gated)."""
    path = model_path(version, PROMOTION_REPORT)
    return storage.read_bytes(path).decode() if storage.exists(path) else None
