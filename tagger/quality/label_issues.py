"""Curated labels that are probably wrong: cleanlab's confident learning on model scores.

Pure functions of arrays. The scores must be out-of-sample (predicted by a model that did
not learn from these products' labels): a model scores the labels it was trained on as
right, noise included, and cleanlab then finds nothing. tagger.review.issues gets them from
the registered model's validation and test splits.

Per attribute, over the products whose label for it is known: a `single` attribute is one
multi-class problem (scores normalised to sum to 1, as a sigmoid head's need not); a `multi`
attribute is cleanlab's multi-label case, each value's score on its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from catalog_schemas.taxonomy import Attribute, Taxonomy

log = logging.getLogger(__name__)

# Below this many labelled rows an attribute is skipped: confident learning estimates the
# noise rate of every pair of values from the rows, and a handful says nothing.
MIN_ROWS = 10


@dataclass(frozen=True)
class LabelIssue:
    row: int  # into the arrays given
    attribute: str
    given: tuple[str, ...]
    suggested: tuple[str, ...]
    score: float  # cleanlab label quality: the lower, the likelier wrong


def compute_label_issues(taxonomy: Taxonomy, targets: np.ndarray, mask: np.ndarray,
                         scores: np.ndarray, thresholds: np.ndarray) -> list[LabelIssue]:
    """The labels cleanlab flags, every attribute, lowest label quality first.

    targets, mask, scores: [N, K] in the taxonomy's output order (scores out-of-sample);
    thresholds [K]: the decision thresholds that make a multi attribute's suggestion."""
    issues: list[LabelIssue] = []
    for attr in taxonomy.attributes:
        sl = taxonomy.slices[attr.name]
        rows = np.flatnonzero(mask[:, sl].all(axis=1))
        if len(rows) < MIN_ROWS:
            log.info("label issues: %s skipped (%d labelled rows, need %d)", attr.name, len(rows), MIN_ROWS)
            continue
        find = _single_issues if attr.kind == "single" else _multi_issues
        issues += find(attr, rows, targets[rows, sl], scores[rows, sl], thresholds[sl])
    return sorted(issues, key=lambda i: (i.score, i.row, i.attribute))


# n_jobs=1 below: cleanlab's find_label_issues runs a multiprocessing Pool by default, which forks
# this process. A fork of a process with running threads (torch's, Prefect's event loop, the
# loaders') can leave a child holding a lock no thread will release: the pool then never
# finishes and the run hangs. One process is fast enough here (one attribute's labels at a
# time), so the pool is never used.


def _single_issues(attr: Attribute, rows: np.ndarray, targets: np.ndarray, scores: np.ndarray,
                   thresholds: np.ndarray) -> list[LabelIssue]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = targets.argmax(axis=1)
    probs = np.clip(scores.astype(np.float64), 1e-6, None)
    probs /= probs.sum(axis=1, keepdims=True)
    flagged = find_label_issues(labels, probs, n_jobs=1)  # no process pool: see above
    quality = get_label_quality_scores(labels, probs)
    suggested = probs.argmax(axis=1)
    return [LabelIssue(int(rows[i]), attr.name, (attr.values[labels[i]],), (attr.values[suggested[i]],),
                       float(quality[i])) for i in np.flatnonzero(flagged)]


def _multi_issues(attr: Attribute, rows: np.ndarray, targets: np.ndarray, scores: np.ndarray,
                  thresholds: np.ndarray) -> list[LabelIssue]:
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    labels = [np.flatnonzero(t).tolist() for t in targets]
    probs = np.clip(scores.astype(np.float64), 1e-6, 1 - 1e-6)
    flagged = find_label_issues(labels, probs, n_jobs=1)  # no process pool: see above
    quality = get_label_quality_scores(labels, probs)

    def names(idx) -> tuple[str, ...]:
        return tuple(attr.values[j] for j in idx)

    return [LabelIssue(int(rows[i]), attr.name, names(labels[i]),
                       names(np.flatnonzero(probs[i] >= thresholds)), float(quality[i]))
            for i in np.flatnonzero(flagged)]


def precision_recall(found: set, truth: set) -> tuple[float | None, float | None]:
    """(precision, recall) of a found set against the true set; None where undefined."""
    hits = len(found & truth)
    return (hits / len(found) if found else None, hits / len(truth) if truth else None)
