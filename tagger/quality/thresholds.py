"""Per-output decision thresholds and the decisions they imply."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np

from tagger.quality.prior_shift import known_single_rows, one_standard_error_pick


def precision_recall_curve(y_true, y_score):
    """sklearn.metrics.precision_recall_curve, imported when thresholds are tuned: a tag
    run only applies them, and importing scikit-learn costs it ~1.4 s."""
    from sklearn.metrics import precision_recall_curve as curve

    return curve(y_true, y_score)


def _best_f1_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Score threshold with the highest F1; ties go to the highest threshold."""
    precision, recall, thresholds = precision_recall_curve(y_true, y_score)
    # The curve's last point (recall 0) has no threshold; drop it.
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    # Thresholds are increasing, so the last maximal index is the highest
    # threshold: the most conservative choice among equally good ones.
    # A tiny tolerance keeps float noise from breaking genuine ties.
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)[-1]
    return float(thresholds[best])


def _float32_at_most(value: float) -> np.float32:
    """Largest float32 <= value, so `score >= threshold` still holds for that score."""
    out = np.float32(value)
    if float(out) > value:
        out = np.nextafter(out, np.float32(-np.inf))
    return out


def tune_thresholds(
    scores: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    *,
    fallback: float = 0.5,
) -> np.ndarray:
    """One threshold per output maximising F1 over its known entries.

    Decision rule is ``score >= threshold``. The best cut is searched over the
    output's known scores and placed halfway between the lowest accepted score and
    the next lower one. Tie rule: among cuts with equal F1 the highest is taken
    (fewest positive decisions). Outputs with no known positive get ``fallback``.
    Returns float32 [K].
    """
    scores = np.asarray(scores)
    positive = np.asarray(targets) > 0.5
    known = np.asarray(mask, dtype=bool)
    out = np.full(scores.shape[1], fallback, dtype=np.float32)
    for k in range(scores.shape[1]):
        rows = known[:, k]
        if not positive[rows, k].any():
            continue
        best = _best_f1_threshold(positive[rows, k], scores[rows, k])
        # Halfway to the next lower known score: the same decisions on this split, but a
        # margin instead of a knife edge for new data and small numeric changes (bf16).
        lower = scores[rows, k][scores[rows, k] < best]
        out[k] = _float32_at_most((best + lower.max()) / 2 if lower.size else best)
    return out


def precision_thresholds(
    scores: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    min_precision: float,
    *,
    min_positives: int = 5,
) -> np.ndarray:
    """Auto-publish threshold per output: the lowest cut whose precision over the output's
    known entries is >= min_precision, counting only cuts that accept at least
    `min_positives` true positives (a precision measured on two tags means nothing).
    Placed halfway to the next lower score, like tune_thresholds. Where no cut reaches the
    target the threshold is +inf: that value is never auto-published, every tag of it
    goes to review. Returns float32 [K].
    """
    scores = np.asarray(scores)
    positive = np.asarray(targets) > 0.5
    known = np.asarray(mask, dtype=bool)
    out = np.full(scores.shape[1], np.inf, dtype=np.float32)
    for k in range(scores.shape[1]):
        rows = known[:, k]
        y, s = positive[rows, k], scores[rows, k]
        if y.sum() < min_positives:
            continue
        precision, _, cuts = precision_recall_curve(y, s)
        # Cut i accepts scores >= cuts[i]; its true positives, counted from the top.
        order = np.sort(s[y])
        true_pos = len(order) - np.searchsorted(order, cuts, side="left")
        ok = np.flatnonzero((precision[:-1] >= min_precision) & (true_pos >= min_positives))
        if ok.size == 0:
            continue
        best = float(cuts[ok[0]])
        lower = s[s < best]
        out[k] = _float32_at_most((best + lower.max()) / 2 if lower.size else best)
    return out


def review_flags(scores: np.ndarray, decisions: np.ndarray, auto_thresholds: np.ndarray | None) -> np.ndarray:
    """True where a decision was made below its value's auto-publish threshold: a tag a
    person should confirm. All False without auto-publish thresholds."""
    if auto_thresholds is None:
        return np.zeros_like(np.asarray(decisions, dtype=bool))
    return np.asarray(decisions, dtype=bool) & (np.asarray(scores) < np.asarray(auto_thresholds)[None, :])


def compute_decisions(
    scores: np.ndarray,
    thresholds: np.ndarray,
    single_slices: Sequence[slice],
    *,
    argmax_slices: Collection[slice] = (),
) -> np.ndarray:
    """Boolean decisions [N,K] from scores and per-output thresholds ([K], or [N,K]: one
    set per row).

    Outputs outside every single slice: ``score >= threshold``. Within a single
    slice at most one value per row is chosen: the highest-scoring value among
    those passing their threshold, none if none passes. Within a slice of
    `argmax_slices` (a softmax head's attribute): the highest-scoring value of
    all, chosen only if it passes its own threshold, else none (abstain). Equal
    scores resolve to the first value in the slice.
    """
    scores = np.asarray(scores)
    passes = scores >= np.asarray(thresholds)  # [K] broadcasts over the rows
    decisions = passes.copy()
    rows = np.arange(len(scores))
    for sl in single_slices:
        if sl in argmax_slices:
            continue
        block_pass = passes[:, sl]
        # Failing values can never win the argmax.
        block_scores = np.where(block_pass, scores[:, sl], -np.inf)
        winner = block_scores.argmax(axis=1)
        block = np.zeros_like(block_pass)
        block[rows, winner] = True
        decisions[:, sl] = block & block_pass.any(axis=1, keepdims=True)
    for sl in argmax_slices:
        block_pass = passes[:, sl]
        winner = scores[:, sl].argmax(axis=1)
        block = np.zeros_like(block_pass)
        block[rows, winner] = block_pass[rows, winner]
        decisions[:, sl] = block
    return decisions


def choose_abstention(scores: np.ndarray, thresholds: np.ndarray, targets: np.ndarray,
                      mask: np.ndarray, heads: Mapping[str, slice],
                      tune: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], *,
                      seed: int = 0) -> tuple[np.ndarray, dict[str, bool]]:
    """(thresholds, abstains per attribute): per softmax attribute of `heads` (name ->
    slice), whether it abstains below its `thresholds` (no value where the winner's score is
    below the winner's threshold) or always decides its highest-scoring value (thresholds 0
    in its slice; the review band still flags the unsure ones).

    Chosen on validation by top-1 accuracy + macro-F1 over the rows of known value, an
    abstention counting as wrong, with the one-standard-error rule, always deciding first.
    The thresholds were tuned on these very rows, which flatters abstaining, so its figure
    is cross-fitted: each half of the rows (seeded) is decided with thresholds that `tune`
    (scores, targets, mask -> thresholds, the way `thresholds` were made) fits on the other
    half. Each value's threshold is tuned for its own F1 against the rest, which does not
    count what an abstention on a product the argmax gets right costs; on the real catalog's
    test split always deciding scored higher on both figures (benchmarks/README.md)."""
    rng = np.random.default_rng(seed)
    scores = np.asarray(scores)
    out = np.asarray(thresholds, dtype=np.float32).copy()
    fold = rng.permutation(len(scores)) % 2
    crossed = np.empty_like(out, shape=scores.shape)  # per row: thresholds fitted on the other half
    for f in (0, 1):
        crossed[fold == f] = tune(scores[fold != f], targets[fold != f], mask[fold != f])
    # the very rule the tag run applies, with each row's cross-fitted thresholds
    abstaining = compute_decisions(scores, crossed, list(heads.values()), argmax_slices=heads.values())
    abstains: dict[str, bool] = {}
    for name, sl in heads.items():
        known = known_single_rows(targets, mask, sl)
        abstains[name] = False
        if known.any():
            k = sl.stop - sl.start
            decided = abstaining[known, sl]
            y = np.asarray(targets[known, sl]).argmax(1)
            predictions = [scores[known, sl].argmax(1), np.where(decided.any(1), decided.argmax(1), k)]
            abstains[name] = one_standard_error_pick(y, predictions, k, rng) == 1
        if not abstains[name]:
            out[sl] = 0.0
    return out, abstains
