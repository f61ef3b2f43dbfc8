"""The taxonomy format: which attributes a product has, their values, and where they apply.

A taxonomy is one YAML file::

    name: demo
    attributes:
      - name: colour
        kind: single            # exactly one value per product
        values: [red, green, blue]
      - name: features
        kind: multi             # any number of values, including none
        values: [logo, pocket]
      - name: sleeve_length
        kind: single
        values: [short, long, sleeveless]
        categories: [tops, dresses]   # masked for products of other categories
        weight: 1.0             # optional: importance of its loss term (default 1)
    catalog:                    # optional: how a catalog export maps onto products
      id: id
      category: category
      image: "images/{id}.jpg"  # a column name, or a template over columns
      text: ["{brand} {title}", description]  # optional: the product's text (or one column)
      multi_separator: "|"      # text cells of multi attributes: "logo|pocket"
      multi_none: "-"           # known to have none (an empty cell is unknown)

Every (attribute, value) pair is one output of the model, in the order of this file.
"""

from __future__ import annotations

import re
import string
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")


class TaxonomyError(ValueError):
    """A taxonomy file that cannot be used; the message says where and how to fix it."""


class Attribute(BaseModel):
    """One attribute of a product (colour, pattern, ...) and the values it can take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Attribute name, as in the tag tables and the model card.")
    kind: Literal["single", "multi"] = Field(
        description="single: exactly one value per product; multi: any number of values."
    )
    values: tuple[str, ...] = Field(min_length=1, description="The values, one model output each.")
    categories: tuple[str, ...] | None = Field(
        default=None,
        description="Product categories the attribute applies to; None means all. "
        "For other categories its labels are masked and nothing is predicted.",
    )
    column: str | None = Field(
        default=None, description="Catalog column holding the labels; defaults to `name`."
    )
    description: str = ""
    weight: float = Field(
        default=1.0, ge=0,
        description="Importance weight of the attribute's loss term in training (1: as every "
        "other attribute; 0: not trained on). Leaves thresholds and metrics as they are.",
    )

    @model_serializer(mode="wrap")
    def _omit_default_weight(self, handler):
        # Taxonomies written before `weight` existed serialise exactly as they were.
        data = handler(self)
        if self.weight == 1.0 and isinstance(data, dict):
            data.pop("weight", None)
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"attribute name {v!r} must be letters, digits, '_' or '-'")
        return v

    @field_validator("values")
    @classmethod
    def _check_values(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for value in v:
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"values must be non-empty strings, got {value!r}")
            if value in seen:
                raise ValueError(f"value {value!r} is listed twice")
            seen.add(value)
        return v

    @property
    def source_column(self) -> str:
        return self.column or self.name

    def applies_to(self, category: str | None) -> bool:
        return self.categories is None or (category is not None and category in self.categories)


class CatalogMapping(BaseModel):
    """How the columns of a catalog export map onto products."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default="id", description="Column with the product id.")
    category: str | None = Field(
        default="category", description="Column with the product category (None: no categories)."
    )
    image: str | tuple[str, ...] = Field(
        default="image",
        description="Column with the image URI, or a template such as 'images/{id}.jpg' "
        "filled from the row; relative URIs are resolved against the export's folder. A list "
        "of them for several images per product (front, back, detail), in order; a column "
        "may also hold a list (JSON Lines, Parquet) or several URIs split by image_separator.",
    )
    image_separator: str | None = Field(
        default=None,
        description="Separator of several image URIs in one text cell (CSV), e.g. '|'. "
        "None: a text cell is one URI.",
    )
    multi_separator: str = Field(
        default="|", description="Separator of values of a multi attribute in a text cell."
    )
    multi_none: str = Field(
        default="-",
        description="Text cell meaning 'known to have none of the values' for a multi "
        "attribute (an empty cell means unknown).",
    )
    text: tuple[str, ...] = Field(
        default=(),
        description="The product's text (title, description): columns or templates such as "
        "'{brand} {title}' filled from the row, one string or a list; the non-empty parts "
        "joined with ' ', cleaned (tagger.ingest.text). Empty: products have no text.",
    )

    @field_validator("text", mode="before")
    @classmethod
    def _one_or_more(cls, v):
        return (v,) if isinstance(v, str) else v

    @field_validator("image", mode="before")
    @classmethod
    def _image_list(cls, v):
        # One image stays a string, so taxonomies serialise as they did before lists existed.
        if isinstance(v, (list, tuple)):
            v = tuple(v)
            return v[0] if len(v) == 1 else v
        return v

    @field_validator("image")
    @classmethod
    def _check_image(cls, v: str | tuple[str, ...]) -> str | tuple[str, ...]:
        for entry in (v,) if isinstance(v, str) else v:
            if not entry.strip():
                raise ValueError("image entries must be column names or templates, got an empty one")
        if not isinstance(v, str) and not v:
            raise ValueError("image needs at least one column or template")
        return v

    @property
    def images(self) -> tuple[str, ...]:
        """The image columns or templates, in order (one for a single image)."""
        return (self.image,) if isinstance(self.image, str) else self.image

    @field_validator("text")
    @classmethod
    def _check_text(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            if not entry.strip():
                raise ValueError("text entries must be column names or templates, got an empty one")
            try:
                list(string.Formatter().parse(entry))
            except ValueError as e:
                raise ValueError(f"text template {entry!r} is not valid ({e}); write columns as "
                                 "{column} and a literal brace as {{ or }}") from None
        return v

    @model_serializer(mode="wrap")
    def _omit_no_text(self, handler):
        # Taxonomies written before `text` existed serialise exactly as they were.
        data = handler(self)
        if not self.text and isinstance(data, dict):
            data.pop("text", None)
        if self.image_separator is None and isinstance(data, dict):
            data.pop("image_separator", None)
        return data


class Taxonomy(BaseModel):
    """A named list of attributes; the model has one output per (attribute, value)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str = "1"
    description: str = ""
    attributes: tuple[Attribute, ...] = Field(min_length=1)
    catalog: CatalogMapping = CatalogMapping()

    @model_validator(mode="after")
    def _unique_attributes(self) -> Taxonomy:
        names = [a.name for a in self.attributes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"attribute names must be unique; repeated: {', '.join(dupes)}")
        return self

    @cached_property
    def outputs(self) -> list[tuple[str, str]]:
        """(attribute, value) of every model output, in order."""
        return [(a.name, v) for a in self.attributes for v in a.values]

    @cached_property
    def slices(self) -> dict[str, slice]:
        """The outputs of each attribute as a slice into the output vector."""
        out, start = {}, 0
        for a in self.attributes:
            out[a.name] = slice(start, start + len(a.values))
            start += len(a.values)
        return out

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def attribute(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        known = ", ".join(a.name for a in self.attributes)
        raise KeyError(f"Unknown attribute {name!r}. Known: {known}")

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def load_taxonomy(source: str | Path | dict) -> Taxonomy:
    """Load and validate a taxonomy from a YAML file, YAML text or a dict.

    Errors name the file and the offending field, e.g.
    ``taxonomy demo.yaml: attributes.1.kind: Input should be 'single' or 'multi'``.
    """
    label = "<dict>"
    if isinstance(source, dict):
        data = source
    else:
        text = str(source)
        path = Path(text)
        if "\n" not in text and path.suffix in {".yaml", ".yml", ".json"}:
            if not path.is_file():
                raise TaxonomyError(f"Taxonomy file {text!r} does not exist.")
            label, text = path.name, path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise TaxonomyError(f"taxonomy {label}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise TaxonomyError(f"taxonomy {label}: expected a mapping with 'name' and 'attributes'.")
    try:
        return Taxonomy.model_validate(data)
    except Exception as e:  # pydantic.ValidationError: rephrase as one readable message
        errors = getattr(e, "errors", None)
        if errors is None:
            raise
        parts = [
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in errors()
        ]
        raise TaxonomyError(f"taxonomy {label}: " + "; ".join(parts)) from None


def shipped_taxonomy(name: str) -> Path:
    """Path of a taxonomy shipped in catalog_schemas/taxonomies/ ('demo', ...)."""
    folder = Path(__file__).parent / "taxonomies"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise TaxonomyError(f"No shipped taxonomy {name!r}. Shipped: {known}")
    return path
