"""What the data looks like: table schemas and the taxonomy format. Imports nothing of ours."""

from catalog_schemas.card import CARD_FORMAT, CardError, ModelCard, parse_card
from catalog_schemas.tables import (
    CORRECTIONS,
    EVALUATION_PREDICTIONS,
    IMAGES,
    LABEL_ISSUES,
    PRODUCTS,
    REJECTS,
    TAG_HISTORY,
    TAG_LATEST,
    TAG_STATE,
)
from catalog_schemas.taxonomy import (
    Attribute,
    CatalogMapping,
    Taxonomy,
    TaxonomyError,
    load_taxonomy,
    shipped_taxonomy,
)

__all__ = [
    "CARD_FORMAT", "CardError", "ModelCard", "parse_card",
    "CORRECTIONS", "EVALUATION_PREDICTIONS", "IMAGES", "LABEL_ISSUES", "PRODUCTS", "REJECTS", "TAG_HISTORY", "TAG_LATEST",
    "TAG_STATE",
    "Attribute", "CatalogMapping", "Taxonomy", "TaxonomyError", "load_taxonomy",
    "shipped_taxonomy",
]
