"""How far the exact title goes: the quality benchmark's test products whose title is in the
training export verbatim, and how often the training products' majority value is right.

A catalog lists one product many times (colours, re-listings, seasons), often under one
title. For those test products, a model of the exact title learns at best what the
training products with that title say, so the majority of their labels is a rough
ceiling there (not a proven one): below 1 where one title carries several values
(season: a product re-listed each season). Labels an export leaves empty (season and year are
empty for two thirds of the shared catalog) are left out, as training and evaluation
leave them out. On the quality benchmark's own split (a hash of the id); no lake, no model.

    .venv/bin/python -m benchmarks.title_memory
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from benchmarks.quality import SHARED, TAXONOMY, in_test_export  # noqa: E402
from catalog_schemas.taxonomy import load_taxonomy  # noqa: E402


def title_memory(df: pd.DataFrame, test_share: float = 0.15, title: str = "productDisplayName",
                 attributes: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Per attribute (default: those the shipped taxonomy declares, which the quality
    benchmark scores): labelled test products, the share whose title labels a training
    product too, and the accuracy of those training products' majority value on them.
    `df` holds strings, "" where the export leaves a value empty."""
    if attributes is None:
        attributes = tuple(a.name for a in load_taxonomy(TAXONOMY).attributes)
    test = in_test_export(df["id"], test_share)
    out = {}
    for a in attributes:
        labelled = df[(df[a] != "") & (df[title] != "")]
        train, held = labelled[~test[labelled.index]], labelled[test[labelled.index]]
        # the most common value per title; ties go to the value first in sort order, so a run repeats
        majority = (train.groupby([title, a]).size().rename("n").reset_index()
                    .sort_values([title, "n", a], ascending=[True, False, True])
                    .drop_duplicates(title).set_index(title)[a])
        seen = held[title].isin(majority.index)
        right = held[seen][title].map(majority) == held[seen][a]
        out[a] = {"labelled_test": int(len(held)), "title_seen_share": float(seen.mean()) if len(held) else 0.0,
                  "seen": int(seen.sum()), "majority_accuracy": float(right.mean()) if seen.any() else float("nan")}
    return out


def table(found: dict[str, dict]) -> str:
    rows = ["| attribute | labelled test products | title in training | majority right on those |",
            "|---|---|---|---|"]
    for a, r in found.items():
        rows.append(f"| {a} | {r['labelled_test']:,} | {r['title_seen_share']:.1%} ({r['seen']:,}) "
                    f"| {r['majority_accuracy']:.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--styles", default=str(SHARED / "styles.csv"), help="the catalog export (CSV)")
    p.add_argument("--test-share", type=float, default=0.15, help="as benchmarks.quality's")
    a = p.parse_args(argv)
    if not Path(a.styles).exists():
        sys.exit(f"No catalog export at {a.styles}: nothing to measure.")
    found = title_memory(pd.read_csv(a.styles, dtype=str, keep_default_na=False), a.test_share)
    print(table(found))
    return found


if __name__ == "__main__":
    main()
