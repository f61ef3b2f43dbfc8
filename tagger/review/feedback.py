"""Accuracy from feedback: of the model's tags reviewers saw, the share they kept.

Counted from the corrections table: every value a task showed with a model score (curated
values shown for a label issue are not the model's) is one reviewed tag, kept when the
reviewer's values still hold it. Per attribute and value, and per day of review, so the
trend shows on real traffic rather than on a held-out split. The share is kept / reviewed;
reviewed tags are biased to the uncertain band (needs_review), a `review push --sample`
adds auto-published ones.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pyarrow as pa


def compute_feedback(corrections: pa.Table) -> dict:
    """{'overall', 'per_value': [...], 'per_day': [...]} with reviewed, kept and share."""
    by_value: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    by_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    cols = corrections.select(["attribute", "values", "shown", "shown_scores", "reviewed_at"]).to_pydict()
    for attribute, values, shown, scores, at in zip(*cols.values()):
        for value, score in zip(shown, scores):
            if score is None or math.isnan(score):
                continue
            kept = int(value in values)
            for counts in (by_value[(attribute, value)], by_day[at.date().isoformat()]):
                counts[0] += 1
                counts[1] += kept

    def entry(counts: list[int], **key) -> dict:
        return {**key, "reviewed": counts[0], "kept": counts[1],
                "share": round(counts[1] / counts[0], 4) if counts[0] else None}

    total = [sum(c[0] for c in by_day.values()), sum(c[1] for c in by_day.values())]
    return dict(overall=entry(total),
                per_value=[entry(c, attribute=a, value=v) for (a, v), c in sorted(by_value.items())],
                per_day=[entry(c, day=d) for d, c in sorted(by_day.items())])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render_feedback(feedback: dict) -> str:
    """The feedback report as Markdown (catalog/corrections/feedback.md, the Prefect artifact)."""
    o = feedback["overall"]
    lines = ["# Accuracy from feedback", "",
             f"Reviewers kept **{o['kept']} of {o['reviewed']}** model tags they saw ({_pct(o['share'])}).",
             "", "| attribute | value | reviewed | kept | share |", "|---|---|---|---|---|"]
    lines += [f"| {e['attribute']} | {e['value']} | {e['reviewed']} | {e['kept']} | {_pct(e['share'])} |"
              for e in feedback["per_value"]]
    lines += ["", "| day | reviewed | kept | share |", "|---|---|---|---|"]
    lines += [f"| {e['day']} | {e['reviewed']} | {e['kept']} | {_pct(e['share'])} |"
              for e in feedback["per_day"]]
    return "\n".join(lines) + "\n"
