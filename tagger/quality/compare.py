"""Two models on the same products: is the difference more than the choice of products?

A test export of a few thousand products gives each model a mean accuracy and macro-F1,
and a second model a figure 0.001 higher or lower: whether that is a better model or the
luck of which products the export holds, the figures alone do not say. A paired bootstrap
does: the products are resampled with replacement (the same resamples for every model),
each resample gives every model its figures, and the spread of the differences over the
resamples is how far the test export moves them (Efron and Tibshirani, ch. 16). It
measures the test export's sampling, not training's: another seed moves a model too
(benchmarks/README.md reruns them).

The figures are those of the evaluation report: per single attribute, accuracy (an
abstention is wrong) and macro-F1 over the values present, then the mean over the
attributes. Their input is the predictions table `tagger evaluate` writes beside its report
(catalog_schemas.tables.EVALUATION_PREDICTIONS): `compare_predictions` takes those tables,
`tagger compare` (tagger.model.evaluate.compare_evaluations) two model versions' evaluations
of one export.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from catalog_schemas.taxonomy import Taxonomy
from tagger.labels import single_slices

RESAMPLES = 1000
CHUNK = 10_000_000  # resample weights (int32) held at once


def accuracy_and_macro_f1(y: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None,
                          classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, macro-F1 over the values present) of one choice per row: `predicted`
    against `y` (int [N]; a predicted label >= `classes` abstains: wrong, and called for no
    value). One figure each, or one per row of `weights` [R, N] (row multiplicities, a
    bootstrap resample each): the per-value F1 that compute_metrics averages, in a loop of
    bincounts instead of sklearn calls (numpy only: the tag path imports no scikit-learn)."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    classes = classes or int(max(y.max(), predicted.max())) + 1
    w = np.ones((1, len(y))) if weights is None else np.atleast_2d(weights)
    hit = (y == predicted).astype(float)
    tp = np.stack([np.bincount(y, r * hit, classes) for r in w])
    support = np.stack([np.bincount(y, r, classes) for r in w])
    called = np.stack([np.bincount(predicted, r, classes)[:classes] for r in w])  # abstentions: past the end
    present = support > 0
    f1 = np.where(present, 2 * tp / np.maximum(support + called, 1e-12), 0.0)
    accuracy, macro_f1 = tp.sum(1) / w.sum(1), f1.sum(1) / present.sum(1)
    return (accuracy[0], macro_f1[0]) if weights is None else (accuracy, macro_f1)


def single_choices(table: pa.Table, taxonomy: Taxonomy,
                   product_ids: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per single attribute of `taxonomy`, (label, choice) int [N] in the order of
    `product_ids`, from an EVALUATION_PREDICTIONS table: label -1 where the product's value
    is not known as exactly one value; choice the decided value's index, or the attribute's
    number of values where the model abstained."""
    order = {p: i for i, p in enumerate(product_ids)}
    frame = table.select(["product_id", "attribute", "value", "label", "decided"]).to_pandas()
    frame = frame[frame["product_id"].isin(order.keys())]
    out = {}
    for name, sl in single_slices(taxonomy).items():
        values = list(taxonomy.attribute(name).values)
        index = {v: i for i, v in enumerate(values)}
        rows = frame[frame["attribute"] == name]
        value = rows["value"].map(index)
        if value.isna().any():
            unknown = sorted(set(rows["value"][value.isna()]))[:5]
            raise ValueError(f"the predictions give {name} values its taxonomy lacks: {unknown}; "
                             "compare models of one taxonomy")
        at = rows["product_id"].map(order).to_numpy(np.int64)
        value = value.to_numpy(np.int64)
        label = np.full(len(product_ids), -1)
        labelled = rows["label"].to_numpy()
        true_count = np.bincount(at[labelled], minlength=len(product_ids))
        label[at[labelled]] = value[labelled]
        label[true_count != 1] = -1
        choice = np.full(len(product_ids), len(values))
        decided = rows["decided"].to_numpy()
        choice[at[decided]] = value[decided]
        out[name] = (label, choice)
    return out


def choices_from_arrays(taxonomy: Taxonomy, targets, mask, decisions) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """single_choices from the [N, K] arrays of an evaluation in memory (compute_evaluation's
    decisions), without a predictions table: what the promotion gate compares on."""
    positive, known = np.asarray(targets) > 0.5, np.asarray(mask, bool)
    decided = np.asarray(decisions, bool) & known  # as in the table, which holds known entries only
    out = {}
    for name, sl in single_slices(taxonomy).items():
        one = known[:, sl].all(1) & (positive[:, sl].sum(1) == 1)
        label = np.where(one, positive[:, sl].argmax(1), -1)
        choice = np.where(decided[:, sl].any(1), decided[:, sl].argmax(1), sl.stop - sl.start)
        out[name] = (label, choice)
    return out


def paired_bootstrap(labels: Mapping[str, np.ndarray], choices: Mapping[str, Mapping[str, np.ndarray]],
                     classes: Mapping[str, int], reference: str, *, resamples: int = RESAMPLES,
                     level: float = 0.95, seed: int = 0) -> dict[str, dict]:
    """Mean accuracy and macro-F1 over the attributes of `labels` (attribute -> int [N], -1
    unknown) for each model of `choices` (model -> attribute -> int [N], `classes[attribute]`
    where it abstains), each with its `level` percentile interval over `resamples` resamples
    of the N products, and for every model but `reference` the reference's lead over it
    (reference minus model) with its interval and the share of resamples in which the
    reference is ahead."""
    if reference not in choices:
        raise ValueError(f"reference {reference!r} is none of the models compared: {sorted(choices)}")
    if not any((y >= 0).any() for y in labels.values()):
        raise ValueError("no product has a known value of a single attribute: nothing to compare on")
    n = len(next(iter(labels.values())))
    rng = np.random.default_rng(seed)
    point = {model: _figures(labels, by_attribute, classes, None) for model, by_attribute in choices.items()}
    parts: dict[str, list[dict[str, np.ndarray]]] = {model: [] for model in choices}
    step = max(1, CHUNK // max(n, 1))  # resamples at a time: an export of 100k products stays at ~80 MB
    for start in range(0, resamples, step):
        weights = rng.multinomial(n, np.full(n, 1 / n), size=min(step, resamples - start)).astype(np.int32)
        for model, by_attribute in choices.items():  # the same resamples for every model: paired
            parts[model].append(_figures(labels, by_attribute, classes, weights))
    draws = {model: {k: np.concatenate([p[k] for p in chunks]) for k in ("accuracy", "macro_f1")}
             for model, chunks in parts.items()}
    tails = (100 * (1 - level) / 2, 100 * (1 + level) / 2)

    def interval(x: np.ndarray) -> list[float]:
        return [round(float(v), 4) for v in np.nanpercentile(x, tails)]

    out = {}
    for model in choices:
        entry = {f"mean_{k}": round(point[model][k], 4) for k in point[model]}
        entry.update({f"mean_{k}_interval": interval(draws[model][k]) for k in draws[model]})
        if model != reference:
            for k in draws[model]:
                lead = draws[reference][k] - draws[model][k]
                entry[f"{reference} lead, {k}"] = dict(
                    difference=round(point[reference][k] - point[model][k], 4),
                    interval=interval(lead), ahead_share=round(float(np.nanmean(lead > 0)), 3))
        out[model] = entry
    return {"reference": reference, "resamples": resamples, "level": level, "models": out}


def _figures(labels: Mapping[str, np.ndarray], choices: Mapping[str, np.ndarray], classes: Mapping[str, int],
             weights: np.ndarray | None) -> dict:
    """Mean accuracy and macro-F1 over the attributes with a known label: one figure each,
    or one per row of `weights` [R, N] (a resample's multiplicity of each product; a
    resample that holds no labelled product of an attribute leaves it out of its mean)."""
    found = {"accuracy": [], "macro_f1": []}
    for attribute, y in labels.items():
        known = y >= 0
        if not known.any():
            continue
        w = None if weights is None else weights[:, known]
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy, macro_f1 = accuracy_and_macro_f1(y[known], np.asarray(choices[attribute])[known], w,
                                                       classes[attribute])
        found["accuracy"].append(accuracy)
        found["macro_f1"].append(macro_f1)
    if weights is None:
        return {k: float(np.mean(v)) for k, v in found.items()}
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-empty resample: NaN, skipped by nanpercentile
        return {k: np.nanmean(np.stack(v), axis=0) for k, v in found.items()}


def compare_predictions(tables: Mapping[str, pa.Table], taxonomy: Taxonomy, reference: str, *,
                        resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """paired_bootstrap of the models whose EVALUATION_PREDICTIONS `tables` (name -> table)
    score the same products: the reference's products and labels, each model's choices on
    them (a product a model has no row for counts as an abstention)."""
    if reference not in tables:
        raise ValueError(f"reference {reference!r} is none of the models compared: {sorted(tables)}")
    ids = sorted(set(tables[reference].column("product_id").to_pylist()))
    choices = {name: single_choices(t, taxonomy, ids) for name, t in tables.items()}
    return dict(compare_choices(choices, taxonomy, reference, resamples=resamples, seed=seed), products=len(ids))


def compare_choices(choices: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], taxonomy: Taxonomy,
                    reference: str, *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """paired_bootstrap of single_choices (or choices_from_arrays) of several models on the
    same products, in the same order; the labels are the reference's."""
    labels = {a: y for a, (y, _) in choices[reference].items()}
    classes = {a: sl.stop - sl.start for a, sl in single_slices(taxonomy).items()}
    return paired_bootstrap(labels, {n: {a: c for a, (_, c) in by.items()} for n, by in choices.items()},
                            classes, reference, resamples=resamples, seed=seed)
