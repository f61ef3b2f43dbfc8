"""Taxonomy drift: the catalog's taxonomy against the taxonomy a model was trained on.

Tagging goes on when they differ (values are matched by name, so a value both have is
tagged as before), but a person must hear of it: a value the catalog added is one the model
can never predict, and a value the catalog dropped is one the model still predicts, until a
retrained version is promoted.
"""

from __future__ import annotations

from catalog_schemas.taxonomy import Taxonomy


def _values(tax: Taxonomy) -> dict[str, set[str]]:
    return {a.name: set(a.values) for a in tax.attributes}


def compute_taxonomy_drift(catalog: Taxonomy, model: Taxonomy) -> dict:
    """{"model_lacks": {attribute: [values]}, "catalog_lacks": {...}, "warning": str}: the
    catalog's values the model can never predict, the model's values the catalog no longer
    has (a whole attribute: all its values), and one line saying so ("" when they agree)."""
    have, want = _values(model), _values(catalog)
    model_lacks = {a: sorted(vs - have.get(a, set())) for a, vs in want.items()}
    catalog_lacks = {a: sorted(vs - want.get(a, set())) for a, vs in have.items()}
    model_lacks = {a: vs for a, vs in model_lacks.items() if vs}
    catalog_lacks = {a: vs for a, vs in catalog_lacks.items() if vs}
    return {"model_lacks": model_lacks, "catalog_lacks": catalog_lacks,
            "warning": _warning(model_lacks, catalog_lacks)}


def _describe(by_attribute: dict[str, list[str]]) -> str:
    return "; ".join(f"{a}: {', '.join(vs)}" for a, vs in sorted(by_attribute.items()))


def _warning(model_lacks: dict[str, list[str]], catalog_lacks: dict[str, list[str]]) -> str:
    parts = []
    if model_lacks:
        parts.append(f"the model can never predict {_describe(model_lacks)}")
    if catalog_lacks:
        parts.append(f"it predicts values the catalog no longer has: {_describe(catalog_lacks)}")
    if not parts:
        return ""
    return ("Taxonomy drift between the catalog and the model: " + "; and ".join(parts)
            + ". Retrain and promote a version to follow the catalog.")
