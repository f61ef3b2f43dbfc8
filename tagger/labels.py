"""Labels <-> model outputs: parse catalog cells into labels, labels into multi-hot + mask.

A product's labels are `{attribute: [values]}`. An attribute that is missing is unknown;
`[]` means known to have none of the values (only for `multi` attributes). Unknown labels
and attributes that do not apply to a product's category are masked: they add nothing to
the loss and get no metric count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from catalog_schemas.taxonomy import CatalogMapping, Taxonomy, load_taxonomy, shipped_taxonomy

__all__ = [
    "LabelError", "Taxonomy", "parse_labels", "encode_labels", "load_taxonomy",
    "shipped_taxonomy", "single_slices", "decode_decisions",
]


class LabelError(ValueError):
    """A label cell that does not fit the taxonomy; becomes a reject row."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _is_missing(cell) -> bool:
    if cell is None:
        return True
    if isinstance(cell, float) and math.isnan(cell):
        return True
    return isinstance(cell, str) and not cell.strip()


def _cell_values(cell, kind: str, mapping: CatalogMapping) -> list[str]:
    if isinstance(cell, str):
        text = cell.strip()
        if kind == "multi":
            if text == mapping.multi_none:
                return []
            return [v.strip() for v in text.split(mapping.multi_separator) if v.strip()]
        return [text]
    if isinstance(cell, (list, tuple, np.ndarray)):
        return [str(v).strip() for v in cell]
    return [str(cell).strip()]


def parse_labels(
    row: Mapping, taxonomy: Taxonomy, category: str | None = None
) -> dict[str, list[str]]:
    """Curated labels of one catalog row, validated against the taxonomy.

    Raises LabelError for a value the taxonomy does not know or a `single` attribute with
    more than one value. Labels of attributes that do not apply to the category are dropped.
    """
    labels: dict[str, list[str]] = {}
    for attr in taxonomy.attributes:
        cell = row.get(attr.source_column)
        if _is_missing(cell) or not attr.applies_to(category):
            continue
        values = _cell_values(cell, attr.kind, taxonomy.catalog)
        unknown = [v for v in values if v not in attr.values]
        if unknown:
            shown = ", ".join(attr.values[:12]) + (", ..." if len(attr.values) > 12 else "")
            raise LabelError(
                "unknown_label",
                f"{attr.name}: {unknown[0]!r} is not a value of the taxonomy. Known: {shown}",
            )
        if attr.kind == "single" and len(values) != 1:
            raise LabelError(
                "bad_label",
                f"{attr.name} is single-choice but the row has {len(values)} values: {values}",
            )
        labels[attr.name] = sorted(set(values), key=attr.values.index)
    return labels


def encode_labels(
    taxonomy: Taxonomy,
    labels: Sequence[Mapping[str, Sequence[str]]],
    categories: Sequence[str | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(targets float32 [N, K], mask bool [N, K]) for a list of label dicts."""
    n, k = len(labels), taxonomy.num_outputs
    targets = np.zeros((n, k), dtype=np.float32)
    mask = np.zeros((n, k), dtype=bool)
    index = {out: i for i, out in enumerate(taxonomy.outputs)}
    for attr in taxonomy.attributes:
        sl = taxonomy.slices[attr.name]
        for row, product_labels in enumerate(labels):
            category = categories[row] if categories is not None else None
            values = product_labels.get(attr.name)
            if values is None or not attr.applies_to(category):
                continue
            mask[row, sl] = True
            for v in values:
                targets[row, index[(attr.name, v)]] = 1.0
    return targets, mask


def applicable_mask(taxonomy: Taxonomy, categories: Sequence[str | None]) -> np.ndarray:
    """bool [N, K]: which outputs apply to each product's category (where we may predict)."""
    out = np.ones((len(categories), taxonomy.num_outputs), dtype=bool)
    for attr in taxonomy.attributes:
        if attr.categories is None:
            continue
        allowed = np.array([c in attr.categories for c in categories], dtype=bool)
        out[:, taxonomy.slices[attr.name]] = allowed[:, None]
    return out


def single_slices(taxonomy: Taxonomy) -> dict[str, slice]:
    return {a.name: taxonomy.slices[a.name] for a in taxonomy.attributes if a.kind == "single"}


def softmax_slices(taxonomy: Taxonomy, head: str) -> tuple[slice, ...]:
    """The output slices a head scores as one softmax each: every `single` attribute's for
    head softmax, none for sigmoid."""
    return tuple(single_slices(taxonomy).values()) if head == "softmax" else ()


def decode_decisions(taxonomy: Taxonomy, decisions: np.ndarray) -> list[list[tuple[str, str, int]]]:
    """Per row, the (attribute, value, output index) of every True decision."""
    outputs = taxonomy.outputs
    rows, cols = np.nonzero(decisions)
    out: list[list[tuple[str, str, int]]] = [[] for _ in range(decisions.shape[0])]
    for r, c in zip(rows.tolist(), cols.tolist()):
        out[r].append((*outputs[c], c))
    return out


def vector_from_values(taxonomy: Taxonomy, table: Mapping[str, Mapping[str, float | None]],
                       *, none: float = np.inf) -> np.ndarray:
    """float32 [K]: table[attribute][value] per output (a card's thresholds), `none` where the
    table holds None. A missing output is a ValueError naming it."""
    try:
        return np.array([none if table[a][v] is None else table[a][v] for a, v in taxonomy.outputs],
                        dtype=np.float32)
    except KeyError as e:
        raise ValueError(f"no entry for {e} among {len(table)} attributes") from None


def values_from_vector(taxonomy: Taxonomy, vector: np.ndarray, *, digits: int = 6
                       ) -> dict[str, dict[str, float | None]]:
    """The inverse of vector_from_values: {attribute: {value: x}}, None where x is not finite."""
    out: dict[str, dict[str, float | None]] = {a.name: {} for a in taxonomy.attributes}
    for (attribute, value), x in zip(taxonomy.outputs, np.asarray(vector, dtype=np.float64)):
        out[attribute][value] = round(float(x), digits) if np.isfinite(x) else None
    return out
