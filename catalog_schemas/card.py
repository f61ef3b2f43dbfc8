"""The model card: what a registered model version is, declared once.

`models/<version>/card.json` holds it. Training writes it last (a version exists once its
card does); `tag`, `evaluate`, the reports, the demo and the Prefect artifacts read it.
Every reader gets a validated `ModelCard`, never a dict read by string keys, and a card
that is not ours, broken, or from a newer version of the format fails when it is read,
saying which.

`format` is the card format, not the model version. Cards written before the field
existed are format 1; every field added since has a default that reads those cards as
they were meant (format 2 added `head`, sigmoid for older cards; format 3 added `tta`,
none for older cards; format 4 added `inputs` and `text`, an image-only model for older
cards; format 5 added `image_pooling`, the first image alone for older cards; format 6 added
`prior_shift`, a record of what the weights already hold, empty for older cards; format 7
added `image_weight`, the photo's whole part for older cards). A change that
old readers cannot ignore bumps CARD_FORMAT; a reader refuses a newer format instead of
misreading it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from catalog_schemas.taxonomy import Taxonomy

# 2: `head` (a softmax head's scores are softmaxes; an older reader would take them for
# sigmoids). 3: `tta` (flip's thresholds and temperatures were tuned on flip-averaged
# logits; an older reader would score one pass and misapply them). 4: `inputs` / `text` (a
# model that reads the product's text; an older reader would feed it images only). 5:
# `image_pooling` (thresholds tuned on the pooled logits of a product's several images; an
# older reader would score its first image alone). 6: `prior_shift` (the weights hold it, so
# an older reader would score right, but its strict schema refuses the unknown field: the
# format says "upgrade" instead). 7: `image_weight` (the fused model is built with it; an
# older reader would score the photo's whole part). A card without `format` is format 1.
CARD_FORMAT = 7


class CardError(ValueError):
    """A card.json that cannot be used; the message names the file and what is wrong."""


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Part):
    """How images become model input: derived from the backbone (timm's pretrained config)."""

    image_size: int = Field(ge=8, description="Square input size in px.")
    mean: tuple[float, float, float] = Field(description="Per-channel mean of the normalisation (RGB, 0-1).")
    std: tuple[float, float, float] = Field(description="Per-channel std of the normalisation (RGB, 0-1).")


class TextConfig(_Part):
    """How a product's text becomes model input (tagger.model.text): hashed word, word-pair
    and character n-gram features, looked up in one embedding table and averaged. Hashing
    needs no vocabulary file and no download, and a word never seen in training still
    shares its character n-grams with words that were."""

    buckets: int = Field(2**16, ge=16, le=2**24, description="Hash buckets of the embedding "
                         "table. 65,536: a catalog's words, pairs and n-grams collide rarely, and "
                         "the table (x dim floats) stays small next to the image backbone.")
    dim: int = Field(64, ge=4, le=1024, description="Width of a feature's embedding and of the text vector.")
    max_tokens: int = Field(96, ge=1, le=4096, description="Features per product kept (words "
                            "first, then word pairs, then character n-grams): a title has "
                            "5-15 words, so 96 keeps all of a title's features.")
    char_ngrams: tuple[int, ...] = Field((3,), description="Lengths of the character n-grams "
                                         "taken within each word (with its boundaries).")


class EmaChoice(_Part):
    """Whether the raw weights or their exponential moving average were registered."""

    decay: float = Field(description="EMA decay used in training.")
    val_mAP_raw: float = Field(description="Validation mAP of the raw weights.")
    val_mAP_ema: float = Field(description="Validation mAP of the EMA weights.")
    registered: Literal["raw", "ema"] = Field(description="The weights in model.safetensors.")


class DataSnapshot(_Part):
    """What the model was trained and validated on."""

    snapshot: str = Field(description="Hash of the product ids, image hashes and labels trained on.")
    products: int = Field(ge=0, description="Labelled products of the lake.")
    train: int = Field(ge=0, description="Products in the training split.")
    validation: int = Field(ge=0, description="Products in the validation split.")
    test: int = Field(0, ge=0, description="Products in the test split (0: none; cards before test splits).")
    lake: str = Field(description="Lake root the model was trained in (informative only).")


class Epoch(_Part):
    """One trained epoch; the validation figures are of the weights the epoch would register
    (raw or EMA), None on cards from before they were recorded."""

    epoch: int = Field(ge=1)
    train_loss: float
    seconds: float
    val_loss: float | None = Field(None, description="The training loss function on validation (masked).")
    val_mAP: float | None = Field(None, description="Validation mAP.")
    val_accuracy: float | None = Field(
        None, description="Mean over single attributes of their top-1 validation accuracy.")
    val_attribute_accuracy: dict[str, float] | None = Field(
        None, description="Top-1 validation accuracy per single attribute.")
    weights: Literal["raw", "ema"] | None = Field(None, description="Which weights the figures are of.")
    val_mAP_raw: float | None = Field(None, description="Validation mAP of the raw weights (with EMA).")
    val_mAP_ema: float | None = Field(None, description="Validation mAP of the EMA weights (with EMA).")

    @model_serializer(mode="wrap")
    def _recorded_only(self, handler) -> dict:
        # An epoch without validation figures is written as cards before them wrote it.
        return {k: v for k, v in handler(self).items() if v is not None}


class TrainingRun(_Part):
    """Where and how long training ran, with the library versions."""

    device: str
    world_size: int = Field(ge=1, description="Training processes (DDP ranks).")
    seconds: float = Field(description="Wall time from start to registration.")
    torch: str
    timm: str


PerValue = dict[str, dict[str, float]]


class ModelCard(BaseModel):
    """A registered model version: taxonomy, input, decision thresholds, calibration,
    validation metrics, the resolved training config and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = Field(CARD_FORMAT, ge=1, description="Card format (CARD_FORMAT).")
    version: str = Field(description="Model version: sortable time stamp + salt.")
    created_at: str = Field(description="When the card was written (ISO 8601, UTC).")
    backbone: str = Field(description="Short backbone name (tagger/backbones.py).")
    timm_name: str = Field(description="The timm architecture the backbone names.")
    head: Literal["sigmoid", "softmax"] = Field(
        "sigmoid", description="How `single` attributes score: a sigmoid per value, or one softmax "
        "per attribute with its argmax value decided (TrainConfig.head). Cards before format 2: sigmoid.")
    tta: Literal["none", "flip"] = Field(
        "none", description="Test-time augmentation every scorer applies (TrainConfig.tta): flip "
        "averages the logits of each image and its mirror. Written only when not none; cards "
        "before format 3: none.")
    inputs: Literal["image", "text", "image+text"] = Field(
        "image", description="What the model reads (TrainConfig.inputs): the photo, the "
        "product's text, or both fused. Written only when not image; cards before format 4: image.")
    text: TextConfig | None = Field(None, description="How the text becomes input; None for an image-only model.")
    image_pooling: Literal["first", "mean", "max"] = Field(
        "first", description="How the logits of a product's several images become its scores "
        "(TrainConfig.image_pooling, chosen on validation): their mean or maximum. Cards "
        "before format 5: first, the first image alone, as they were tuned.")
    image_size: int = Field(ge=8, description="Input size the model was trained at.")
    data_config: DataConfig
    taxonomy: Taxonomy = Field(description="The taxonomy trained on: one output per (attribute, value).")
    thresholds: PerValue = Field(description="Decision threshold per attribute value (calibrated scores).")
    auto_thresholds: dict[str, dict[str, float | None]] | None = Field(
        None, description="Auto-publish threshold per value (None: never auto-published); "
        "None without a precision target.")
    min_precision: float | None = Field(None, description="Precision target the auto thresholds meet.")
    temperature: dict[str, float] = Field(
        default_factory=dict, description="Temperature per attribute (empty: uncalibrated).")
    prior_shift: dict[str, float] = Field(
        default_factory=dict, description="Per softmax attribute, the share tau of the class "
        "weighting its decisions undo (TrainConfig.prior_shift, chosen on validation): the "
        "output layer's bias holds -tau * log(class weight), so scorers apply nothing of their "
        "own. Written only when set; empty: decided as trained.")
    image_weight: dict[str, float] = Field(
        default_factory=dict, description="Per single attribute of a model that fuses the photo "
        "with text, the weight w of the photo's part of its logits for a product with text "
        "(TrainConfig.image_dropout, chosen on validation): text part + bias + w * image part; "
        "a product without text keeps the whole image part. Attributes not named: 1. Written "
        "only when set.")
    ema: EmaChoice | None = Field(None, description="The EMA choice (None: trained without EMA).")
    pos_weight: PerValue = Field(default_factory=dict, description="BCE pos_weight per value used in training.")
    metrics: dict[str, Any] = Field(
        description="Validation metrics (tagger.quality.metrics.compute_metrics): thresholds and "
        "temperatures were tuned on this split, so its F1 figures are optimistic.")
    test_metrics: dict[str, Any] | None = Field(
        None, description="The same metrics on the test split, on which nothing was chosen: the "
        "figures to trust. None: trained without a test split.")
    config: dict[str, Any] = Field(description="The resolved TrainConfig of the run.")
    data: DataSnapshot
    history: list[Epoch] = Field(default_factory=list, description="One entry per trained epoch.")
    best_epoch: int | None = Field(
        None, ge=1, description="The epoch whose weights were registered: the highest validation "
        "mAP (None: cards from before per-epoch validation, which registered the last).")
    training: TrainingRun
    weights_sha256: str | None = Field(None, description="sha256 of model.safetensors, set at registration.")

    @field_validator("ema", mode="before")
    @classmethod
    def _no_ema(cls, v):
        return None if v == {} else v  # cards of runs without EMA hold {}

    @model_serializer(mode="wrap")
    def _optional_fields_when_set(self, handler) -> dict:
        data = handler(self)
        # an old card is written back as it was read
        if data.get("best_epoch") is None:
            data.pop("best_epoch", None)
        if data.get("tta") == "none":
            data.pop("tta", None)
        if data.get("inputs") == "image":
            data.pop("inputs", None)
        if data.get("text") is None:
            data.pop("text", None)
        if data.get("image_pooling") == "first":
            data.pop("image_pooling", None)
        for name in ("prior_shift", "image_weight"):
            if not data.get(name):
                data.pop(name, None)
        return data

    @field_serializer("taxonomy")
    def _taxonomy_as_written(self, taxonomy: Taxonomy) -> dict:
        return taxonomy.to_dict()  # as the taxonomy's own YAML/JSON: unset fields left out

    @model_validator(mode="after")
    def _head_needs_format_2(self) -> ModelCard:
        if self.head != "sigmoid" and self.format < 2:
            raise ValueError(f"head {self.head!r} needs card format 2 or later, the card says {self.format}")
        return self

    @model_validator(mode="after")
    def _tta_needs_format_3(self) -> ModelCard:
        if self.tta != "none" and self.format < 3:
            raise ValueError(f"tta {self.tta!r} needs card format 3 or later, the card says {self.format}")
        return self

    @model_validator(mode="after")
    def _text_needs_format_4(self) -> ModelCard:
        if self.inputs != "image" and self.format < 4:
            raise ValueError(f"inputs {self.inputs!r} needs card format 4 or later, the card says {self.format}")
        if (self.inputs != "image") != (self.text is not None):
            raise ValueError(f"inputs {self.inputs!r} and text {self.text!r} disagree: a model that "
                             "reads text needs its text config, an image-only one has none")
        return self

    @model_validator(mode="after")
    def _pooling_needs_format_5(self) -> ModelCard:
        if self.image_pooling != "first" and self.format < 5:
            raise ValueError(f"image_pooling {self.image_pooling!r} needs card format 5 or later, "
                             f"the card says {self.format}")
        return self

    @model_validator(mode="after")
    def _prior_shift_needs_format_6(self) -> ModelCard:
        if self.prior_shift and self.format < 6:
            raise ValueError(f"prior_shift needs card format 6 or later, the card says {self.format}")
        unknown = set(self.prior_shift) - {a.name for a in self.taxonomy.attributes if a.kind == "single"}
        if unknown:
            raise ValueError(f"prior_shift names {sorted(unknown)}, which are not single attributes "
                             "of the card's taxonomy")
        return self

    @model_validator(mode="after")
    def _image_weight_needs_format_7(self) -> ModelCard:
        if not self.image_weight:
            return self
        if self.format < 7:
            raise ValueError(f"image_weight needs card format 7 or later, the card says {self.format}")
        if self.inputs != "image+text":
            raise ValueError(f"image_weight weighs the photo against the text; inputs {self.inputs!r} "
                             "has no such choice")
        unknown = set(self.image_weight) - {a.name for a in self.taxonomy.attributes if a.kind == "single"}
        if unknown:
            raise ValueError(f"image_weight names {sorted(unknown)}, which are not single attributes "
                             "of the card's taxonomy")
        if any(not 0 <= w <= 1 for w in self.image_weight.values()):
            raise ValueError(f"image_weight must lie in [0, 1]: {self.image_weight}")
        return self

    def image_weight_vector(self) -> list[float]:
        """image_weight per output, in the taxonomy's order (1 where not named)."""
        weights = [1.0] * self.taxonomy.num_outputs
        for name, w in self.image_weight.items():
            sl = self.taxonomy.slices[name]
            weights[sl] = [w] * (sl.stop - sl.start)
        return weights

    @property
    def reads_text(self) -> bool:
        return self.inputs != "image"

    @model_validator(mode="after")
    def _thresholds_cover_outputs(self) -> ModelCard:
        for name, table in (("thresholds", self.thresholds), ("auto_thresholds", self.auto_thresholds)):
            if table is None:
                continue
            missing = [f"{a}={v}" for a, v in self.taxonomy.outputs if v not in table.get(a, {})]
            if missing:
                raise ValueError(f"{name} lack {', '.join(missing[:5])}"
                                 + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        return self

    @property
    def headline(self) -> tuple[str, dict[str, Any]]:
        """(split, metrics) to show a person first: the test split's where there is one,
        else validation's (tuned on it; say so)."""
        if self.test_metrics is not None:
            return "test", self.test_metrics
        return "validation", self.metrics

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


REQUIRED = tuple(n for n, f in ModelCard.model_fields.items() if f.is_required())


def parse_card(data: bytes | str | dict, where: str = "card.json") -> ModelCard:
    """A validated ModelCard from card.json's content; CardError saying what is wrong with
    a card of a newer format, one that is not a model card of ours, or a broken one."""
    if not isinstance(data, dict):
        try:
            data = json.loads(data)
        except ValueError as e:
            raise CardError(f"Model card {where} is not JSON ({e}): an incomplete copy?") from None
    if not isinstance(data, dict):
        raise CardError(f"Model card {where} is not a JSON object: not a model card of ours.")
    data = {"format": 1, **data}  # cards written before the field existed
    fmt = data["format"]
    if isinstance(fmt, int) and fmt > CARD_FORMAT:
        raise CardError(f"Model card {where} has format {fmt}, newer than this product-tagger "
                        f"reads ({CARD_FORMAT}): upgrade product-tagger to use this model.")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CardError(f"Model card {where} lacks {', '.join(missing)}: not a model card of "
                        "product-tagger (or written by a version older than any we read).")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as e:
        parts = [f"{'.'.join(str(p) for p in err['loc']) or '<card>'}: {err['msg']}"
                 for err in e.errors()[:5]]
        raise CardError(f"Model card {where} is not valid: " + "; ".join(parts)) from None
