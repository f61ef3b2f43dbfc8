"""How far the exact title goes: the quality benchmark's test products whose title is in the
training export verbatim, and how often the training products' majority value is right.

A catalog lists one product many times (colours, re-listings, seasons), often under one
title. For those test products, a model of the exact title learns at best what the
training products with that title say, so the majority of their labels is a rough
ceiling there (not a proven one): below 1 where one title carries several values
(season: a product re-listed each season). Labels an export leaves empty (season and year are
empty for two thirds of the shared catalog) are left out, as training and evaluation
leave them out. On the quality benchmark's own split (a hash of the id); no lake, no model.

With `--predictions NAME=URI` (the predictions.parquet of a model's evaluation on the
quality benchmark's test export, which the benchmark prints), each model's accuracy on
the same test products, apart for those whose title is seen in training and the rest: how
near the model comes to the majority where the title has been seen, and what is left where
it has not.

    .venv/bin/python -m benchmarks.title_memory
    .venv/bin/python -m benchmarks.title_memory --predictions "image + text=/var/tmp/bq/lake/models/V/evaluations/benchmark-image---text/predictions.parquet"
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
    out = {}
    for a in attributes:
        held, seen, majority = seen_titles(df, a, test_share, title)
        right = held[seen][title].map(majority) == held[seen][a]
        out[a] = {"labelled_test": int(len(held)), "title_seen_share": float(seen.mean()) if len(held) else 0.0,
                  "seen": int(seen.sum()), "majority_accuracy": float(right.mean()) if seen.any() else float("nan")}
    return out


def seen_titles(df: pd.DataFrame, attribute: str, test_share: float = 0.15,
                title: str = "productDisplayName") -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """(the test products labelled with `attribute`, whether each one's title labels a
    training product too, the training products' majority value per title)."""
    test = in_test_export(df["id"], test_share)
    labelled = df[(df[attribute] != "") & (df[title] != "")]
    train, held = labelled[~test[labelled.index]], labelled[test[labelled.index]]
    # the most common value per title; ties go to the value first in sort order, so a run repeats
    majority = (train.groupby([title, attribute]).size().rename("n").reset_index()
                .sort_values([title, "n", attribute], ascending=[True, False, True])
                .drop_duplicates(title).set_index(title)[attribute])
    return held, held[title].isin(majority.index), majority


def model_by_seen(df: pd.DataFrame, predictions, taxonomy, test_share: float = 0.15,
                  title: str = "productDisplayName") -> dict[str, dict]:
    """Per single attribute of `taxonomy`, a model's accuracy (an abstention is wrong) on the
    test products of `df` whose title is seen in training and on the rest, from its
    EVALUATION_PREDICTIONS table `predictions` over the same test export (the labels are
    the table's, as the model was scored on them)."""
    from tagger.labels import single_slices
    from tagger.quality.compare import single_choices

    test_ids = df["id"][in_test_export(df["id"], test_share)].tolist()
    at = {p: i for i, p in enumerate(test_ids)}
    choices = single_choices(predictions, taxonomy, test_ids)  # once: the table has a row per value
    out = {}
    for attribute in single_slices(taxonomy):
        held, seen, _ = seen_titles(df, attribute, test_share, title)
        rows = held["id"].map(at).to_numpy(dtype=int)
        label, choice = (x[rows] for x in choices[attribute])
        scored = label >= 0
        right = (label == choice)[scored]
        was_seen = seen.to_numpy()[scored]
        out[attribute] = {"seen": int(was_seen.sum()), "unseen": int((~was_seen).sum()),
                          "seen_accuracy": float(right[was_seen].mean()) if was_seen.any() else float("nan"),
                          "unseen_accuracy": float(right[~was_seen].mean()) if (~was_seen).any() else float("nan")}
    return out


def table(found: dict[str, dict]) -> str:
    rows = ["| attribute | labelled test products | title in training | majority right on those |",
            "|---|---|---|---|"]
    for a, r in found.items():
        rows.append(f"| {a} | {r['labelled_test']:,} | {r['title_seen_share']:.1%} ({r['seen']:,}) "
                    f"| {r['majority_accuracy']:.3f} |")
    return "\n".join(rows)


def model_table(found: dict[str, dict], models: dict[str, dict[str, dict]]) -> str:
    names = list(models)
    rows = ["| attribute | majority, title seen | " + " | ".join(f"{n}: title seen | {n}: not seen" for n in names) + " |",
            "|---|---|" + "---|---|" * len(names)]
    for a, r in found.items():
        cells = " | ".join(f"{m[a]['seen_accuracy']:.3f} | {m[a]['unseen_accuracy']:.3f} ({m[a]['unseen']:,})"
                           if a in m else "- | -" for m in models.values())
        rows.append(f"| {a} | {r['majority_accuracy']:.3f} ({r['seen']:,}) | {cells} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--styles", default=str(SHARED / "styles.csv"), help="the catalog export (CSV)")
    p.add_argument("--test-share", type=float, default=0.15, help="as benchmarks.quality's")
    p.add_argument("--predictions", action="append", default=[], metavar="NAME=URI",
                   help="a model's predictions.parquet on the quality benchmark's test export (repeatable)")
    a = p.parse_args(argv)
    if not Path(a.styles).exists():
        sys.exit(f"No catalog export at {a.styles}: nothing to measure.")
    df = pd.read_csv(a.styles, dtype=str, keep_default_na=False)
    found = title_memory(df, a.test_share)
    print(table(found))
    if a.predictions:
        from catalog_schemas.tables import EVALUATION_PREDICTIONS
        from tagger.io.parquet import read_table
        from tagger.io.storage import open_file

        taxonomy = load_taxonomy(TAXONOMY)
        models = {}
        for option in a.predictions:
            name, sep, uri = option.partition("=")
            if not sep:
                sys.exit(f"--predictions {option!r}: expected NAME=URI")
            models[name] = model_by_seen(df, read_table(*open_file(uri), EVALUATION_PREDICTIONS), taxonomy,
                                         a.test_share)
        print(model_table(found, models))
        found = {a_: dict(r, models={n: m.get(a_) for n, m in models.items()}) for a_, r in found.items()}
    return found


if __name__ == "__main__":
    main()
