"""One config surface: frozen pydantic models, loaded from YAML plus overrides.

The same models are the Prefect flow parameters, so the UI renders them as forms, and the
resolved config is saved next to every output (model card, tag metadata).
Unknown keys are an error. Secrets never live here: they come from the environment.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tagger.backbones import BACKBONES, DEFAULT_BACKBONE, Backbone

BackboneName = Literal[tuple(BACKBONES)]  # a dropdown in the Prefect UI
Device = Annotated[Literal["auto", "cpu", "cuda"], Field(
    description="auto: CUDA when present, so one config runs on a laptop and a GPU node.")]


# The stored image size follows the largest training size the registry configures: every
# transform fits an image to the model's size first (tagger/data/transforms.py), so stored
# pixels beyond it are never used, and fewer stored pixels let JPEG draft decoding (1/2, 1/4,
# 1/8 scale while >= the stored size) work on more photos: 800 px ones decode at 400.
STORED_SIDE = max(b.image_size for b in BACKBONES.values())


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngestConfig(_Config):
    """How a catalog export becomes products, image shards and rejects."""

    image_max_side: int = Field(
        STORED_SIDE, ge=32, le=4096,
        description="Longest side of stored images: the largest native size in the backbone "
        "registry (tagger/backbones.py; EfficientNet-B4: 380). Training and tagging first fit "
        "each image to the model's size, so more pixels are never used, and at 380 an 800 px "
        "photo decodes at half scale (JPEG draft). Training bigger than this: raise it "
        "before ingesting. Images are never upscaled.",
    )
    jpeg_quality: int = Field(
        90, ge=50, le=100,
        description="JPEG quality of stored images. 90: no visible loss at training sizes, at a "
        "fraction of the bytes of 100.",
    )
    shard_size: int = Field(
        1000, ge=1, le=100_000,
        description="Images per Parquet shard (~20-60 MB at 512 px, about half at 380): big enough for fast "
        "sequential reads, small enough to rewrite cheaply.",
    )
    chunk_size: int = Field(
        100_000, ge=1,
        description="Export rows read and ingested at a time: memory holds one chunk's rows and "
        "images, not the catalog's (tables and shards come out the same for any chunk size). "
        "100,000: ~100 MB of rows in flight, ten chunks for a million products.",
    )
    workers: int = Field(
        8, ge=1, le=256,
        description="Threads fetching and decoding images. 8: fetching waits on the network "
        "and decoding releases the GIL, so more threads than cores still pay off.",
    )
    max_reject_fraction: float = Field(
        0.5, ge=0, le=1,
        description="Refuse to update the products table when more than this share of rows "
        "is rejected (a broken export or image store must not wipe the catalog).",
    )
    max_pixels: int = Field(
        64_000_000, ge=1,
        description="Decompression-bomb guard on declared width*height. 64 MP: above any product "
        "photo, and at most ~200 MB decoded (RGB).",
    )
    image_roots: list[str] = Field(
        [],
        description="Folders (absolute) and s3:// prefixes, besides the export's own folder, that "
        "image references may point into, checked after resolving symlinks (an images/ folder "
        "linked to another disk, absolute paths on a NAS mount). Empty: only the export's folder.",
    )
    rebuild: bool = Field(
        False,
        description="Rebuild the catalog tables (products, rejects) from the export and the "
        "image shards already stored, ignoring the previous products table (damaged or lost): "
        "images are read to hash them, and those already in a readable shard are not stored again.",
    )

    @field_validator("image_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[str]) -> list[str]:
        bad = [r for r in roots if not (r.startswith("s3://") or Path(r).expanduser().is_absolute())]
        if bad:
            raise ValueError(f"image roots must be absolute folders or s3:// prefixes, not {bad}")
        return roots


class TrainConfig(_Config):
    """Training, threshold tuning and evaluation of one model version."""

    backbone: BackboneName = Field(
        DEFAULT_BACKBONE,
        description="Backbone (tagger/backbones.py). efficientnet_b4: strong accuracy "
        "per FLOP on product photos, and 380 px keeps small details visible.",
    )
    image_size: int | None = Field(
        None, ge=32, le=1024,
        description="Input size in px. Unset: the backbone's own, the size it was pretrained at.",
    )
    epochs: int = Field(
        10, ge=1, le=500,
        description="Passes over the training split. 10: a pretrained backbone fine-tunes in "
        "a few epochs; the cosine decay and the EMA settle it in the last ones.",
    )
    patience: int | None = Field(
        None, ge=1, le=500,
        description="Stop once validation mAP has not improved for this many epochs (the best "
        "epoch is registered either way). Unset: train every epoch, as the cosine decay is "
        "planned over all of them.",
    )
    batch_size: int | None = Field(
        None, ge=1, le=4096,
        description="Per-device batch. Unset: the backbone's own, sized for a 24 GB GPU with AMP.",
    )
    lr: float | None = Field(
        None, gt=0, le=1,
        description="AdamW peak learning rate. Unset: the backbone's own, tuned for "
        "fine-tuning the whole network.",
    )
    weight_decay: float = Field(
        0.05, ge=0, le=1,
        description="AdamW weight decay. 0.05: the usual value for fine-tuning convnets with AdamW.",
    )
    warmup_epochs: float = Field(
        0.5, ge=0, le=50,
        description="Linear warm-up before the cosine decay (epochs). 0.5: the new head's "
        "first, large gradients must not wreck the pretrained features.",
    )
    val_fraction: float = Field(
        0.15, gt=0, lt=0.9,
        description="Share of labelled products held out (multi-label stratified) for "
        "threshold tuning and metrics. 0.15: enough positives per value to tune a threshold, "
        "85% left to train on.",
    )
    test_fraction: float = Field(
        0.15, ge=0, lt=0.5,
        description="Share of labelled products held out (multi-label stratified) as the test "
        "split: nothing is chosen on it (thresholds, temperatures and the EMA choice are "
        "tuned on validation), so its figures are the honest ones the card and report lead "
        "with. 0.15: as many as validation. 0: no test split (the figures shown are then the "
        "tuned-on validation ones, marked so).",
    )
    seed: int = Field(
        0, description="Seed for the split, init and augmentation. Fixed, so reruns split the "
        "data the same way and their metrics compare."
    )
    pos_weight: Literal["linear", "sqrt", "none"] = Field(
        "sqrt",
        description="BCE pos_weight per output: negatives/positives, its sqrt, or none. "
        "sqrt: the validation screen's choice (best mAP and top-1 on the real catalog; linear "
        "buys macro-F1 with 4 points of top-1; benchmarks/README.md).",
    )
    pos_weight_max: float = Field(
        50.0, ge=1, le=1e4,
        description="Clip of pos_weight (and 1/clip from below). 50: a value with a handful of "
        "positives cannot dominate the loss.",
    )
    loss: Literal["bce", "focal", "asl"] = Field(
        "bce", description="bce; focal (down-weights easy entries); asl (asymmetric: "
        "down-weights easy negatives). All masked and pos_weighted (tagger/train/losses.py). "
        "bce: with pos_weight it handles the imbalance, and it has no extra knobs."
    )
    head: Literal["sigmoid", "softmax"] = Field(
        "softmax",
        description="How `single` attributes train and score: softmax (one cross-entropy "
        "classification per attribute; scores are its softmax, a decision is its argmax value "
        "where that passes its threshold) or sigmoid (an independent BCE output per value, like "
        "`multi`). `multi` attributes are BCE either way. softmax: with sqrt class weights the "
        "validation screen's choice (sigmoid, softmax and softmax with sqrt class weights tied "
        "on accuracy + macro-F1; the latter had the best mAP by 5 points; benchmarks/README.md).",
    )
    label_smoothing: float = Field(
        0.1, ge=0, lt=1,
        description="Label smoothing of the softmax head's cross-entropy (ignored by sigmoid). "
        "0.1: the measured setting that beat sqrt pos_weight BCE on top-1.",
    )
    class_weight: Literal["none", "sqrt", "linear"] = Field(
        "sqrt",
        description="Softmax head's counterpart of pos_weight: per value, inverse frequency "
        "among the training split's known rows (linear) or its sqrt, normalised to mean 1 over "
        "the attribute's values and clipped like pos_weight (pos_weight_max); each row weighs as "
        "its label, its label smoothing included. sqrt: measured on validation, none gives 2.5 "
        "points more accuracy but 3.7 less macro-F1 and 1.0 less mAP (rare values seldom win "
        "the argmax); the photo + title model on the real catalog's test export: none 0.942 / "
        "0.790 (accuracy / macro-F1), sqrt 0.939 / 0.845 (benchmarks/README.md).",
    )
    prior_shift: Literal["auto", "none"] = Field(
        "auto",
        description="How much of the class weighting a softmax attribute's decisions undo: "
        "auto: per attribute, the share tau in 0, 0.25, .., 1 of `logit - tau * log(class "
        "weight)` with the best validation top-1 accuracy + macro-F1, folded into the output "
        "layer's bias (tagger/quality/prior_shift.py); none: decide as trained. auto: on the "
        "real catalog's test split it raised top-1 accuracy by 0.1-0.5 points in each of the "
        "fused, text-only and image-only models; macro-F1 moved -1.4 to +0.3 "
        "(benchmarks/README.md).",
    )
    mixup: float = Field(
        0.0, ge=0, le=10,
        description="MixUp: Beta(alpha, alpha) strength; each batch is blended with a shuffled "
        "copy of itself and the loss is the same blend of both label sets (masks included). "
        "0: off. Measured on the real catalog's validation split: 0.2 lost 1.6 points of "
        "accuracy, 2.3 of macro-F1 and 2.3 of mAP in a 3-epoch fine-tune (benchmarks/README.md); "
        "it regularises long schedules.",
    )
    cutmix: float = Field(
        0.0, ge=0, le=10,
        description="CutMix: Beta(alpha, alpha) strength; a box of a shuffled copy is pasted "
        "in, the loss blended by the box's area. With mixup too, each batch takes one of the "
        "two at random. 0: off.",
    )
    inputs: Literal["auto", "image", "text", "image+text"] = Field(
        "auto",
        description="What the model reads. auto: the photo and the product's text (fused, "
        "tagger/model/text.py) where the lake's products have text (the taxonomy's catalog "
        "`text` mapping), the photo alone where none has. text: the text branch alone, a "
        "baseline to measure the fusion against.",
    )
    text_dropout: float = Field(
        0.3, ge=0, lt=1,
        description="Share of training products whose whole text is hidden from a fused "
        "model, so that products with an empty or missing title are tagged from the image "
        "alone. 0.3: the text still carries most of the training signal.",
    )
    image_dropout: float = Field(
        0.2, ge=0, lt=1,
        description="Share of training products with text whose photo is hidden from a fused "
        "model, so that its head's text columns alone are a title-only classifier. After "
        "training, each single-choice attribute's photo weight w (text part + w * image part, "
        "w in 0, 0.25, .., 1) is chosen on validation by top-1 accuracy + macro-F1 "
        "(ModelCard.image_weight): where the title alone decides better, the photo counts "
        "less. A product without text keeps the whole image part. 0: the photo's whole part, "
        "no choice. 0.2: on the real catalog's test split the weights chosen by the plain best "
        "(before the one-standard-error rule) raised macro-F1 by 0.45 points at equal top-1 "
        "(benchmarks/README.md).",
    )
    text_warmup_epochs: int = Field(
        5, ge=0, le=100,
        description="Epochs the text branch of a fused model is fitted alone before the "
        "fused training (tagger/train/text_warmup.py): titles alone decode no image, so an "
        "epoch takes seconds, and the fused model starts from the text model. 5, with the "
        "branch then frozen (fused_text_lr_scale 0): on the real catalog's unseen products "
        "mean accuracy / macro-F1 0.940 / 0.851 and 0.940 / 0.842 in two runs, against 0.938 / "
        "0.842 after 3 epochs and a refit and 0.931 / 0.805 without a warm-up "
        "(benchmarks/README.md). 0: none.",
    )
    text_buckets: int = Field(
        2**16, ge=16, le=2**24,
        description="Hash buckets of the text branch's embedding table (catalog_schemas.card."
        "TextConfig). 65,536: a catalog's words, word pairs and n-grams rarely collide.",
    )
    text_dim: int = Field(
        64, ge=4, le=1024,
        description="Width of the text branch's embeddings. 64: 4 M weights at 65,536 buckets, "
        "about the image backbone's (Lite0) own.",
    )
    text_lr_scale: float = Field(
        100.0, gt=0, le=1000,
        description="The text branch's learning rate as a multiple of lr (its embeddings "
        "are not weight-decayed): each hashed feature's embedding is updated only in the "
        "batches whose products hold it. 100: on the real catalog's titles (text alone, 3 "
        "epochs, warm-up + cosine, batch 96) mean top-1 0.943 against 0.941 at 30x and "
        "0.931 at 10x (benchmarks/README.md).",
    )
    fused_text_lr_scale: float | None = Field(
        0.0, ge=0, le=1000,
        description="The text branch's learning rate, as a multiple of lr, in the fused "
        "epochs that follow a text warm-up (text_warmup_epochs > 0): the warm-up has fitted the "
        "titles, so the fused epochs may keep the branch or refit it. 0: frozen, the photo "
        "and the fused head learn what the title does not say; after 5 warm-up epochs the "
        "refit at text_lr_scale ended where 3 did (0.937 / 0.841; frozen 0.940 / 0.851 and "
        "0.940 / 0.842 in two runs, benchmarks/README.md). None: text_lr_scale, as without "
        "a warm-up.",
    )
    tta: Literal["none", "flip"] = Field(
        "flip",
        description="Test-time augmentation: flip scores each image and its mirror and "
        "averages the logits, in validation, test, evaluate and tag alike (thresholds and "
        "temperatures are tuned on the averaged scores; recorded on the card). flip: on the "
        "real catalog's validation split +1.0 point of accuracy and +1.9 of macro-F1 "
        "(benchmarks/README.md), for twice the scoring time; none halves the time of a tag run.",
    )
    image_pooling: Literal["auto", "mean", "max"] = Field(
        "auto",
        description="How a product with several images is scored: the mean or the maximum "
        "of its images' logits. auto: whichever gives the higher validation mAP (recorded on "
        "the card; mean where no product has several). Training sees one of a product's "
        "images per visit, drawn at random.",
    )
    ema_decay: float | None = Field(
        0.9998, ge=0.9, lt=1,
        description="Keep an exponential moving average of the weights (ramped up from 0 "
        "over the first steps); the EMA or the raw weights, whichever has the higher "
        "validation mAP, is registered. 0.9998: long runs average their last ~5000 steps. "
        "Empty or 0: no EMA.",
    )
    thresholds: Literal["max_f1", "fixed"] = Field(
        "max_f1", description="Decision threshold per value: the one with the best F1 on the "
        "validation split, or `fixed_threshold` for all. max_f1: rare and common values need "
        "different cuts."
    )
    fixed_threshold: float = Field(
        0.5, gt=0, lt=1,
        description="Threshold of `thresholds: fixed`. 0.5: the even-odds point of a "
        "calibrated probability.",
    )
    min_precision: float | None = Field(
        None, gt=0, le=1,
        description="Precision target, e.g. 0.9: tags of a value whose score reaches the "
        "lowest threshold with this precision on the validation split are auto-published; "
        "tags between the decision threshold and it are marked needs_review in the tag tables. "
        "Unset: no review band, every tag over its decision threshold is published.",
    )
    calibrate: bool = Field(
        True, description="Fit one temperature per attribute on the validation split so "
        "scores are calibrated probabilities (reports ECE before and after). On: it costs "
        "seconds and makes scores comparable across attributes."
    )
    promote: Literal["auto", "manual"] = Field(
        "auto",
        description="After registration: auto promotes the new version to production when the "
        "promotion gate passes (not worse than production by more than promote_margin); "
        "manual leaves it a candidate until `tagger promote`. auto: a good retrain goes live "
        "the next night, a bad one never does.",
    )
    promote_margin: float = Field(
        0.01, ge=0, le=1,
        description="Largest drop against production (overall and per attribute) that the "
        "promotion gate still accepts. 0.01: noise on a few thousand products, not a regression.",
    )
    pretrained: bool = Field(
        True, description="Start from the backbone's pretrained weights (timm / Hugging Face "
        "hub). On: ImageNet features need far fewer labelled products than random init."
    )
    weights: str | None = Field(
        None,
        description="Backbone weights file (local or s3://; safetensors or a timm state dict). "
        "Overrides `pretrained`. Unset: `pretrained` decides.",
    )
    sampler: Literal["shards", "random"] = Field(
        "shards",
        description="Training order. shards: shard-aware shuffling (tagger/data/shuffle.py): shard "
        "order shuffled per epoch, products shuffled within windows of `shuffle_window` shards, "
        "ranks and loader workers on disjoint shards, so each image shard is read about once per "
        "epoch whatever the catalog size. random: uniform random order (DistributedSampler), which "
        "reads a whole shard per image once the shards outgrow the loader's 2 GB cache.",
    )
    shuffle_window: int = Field(
        2, ge=1, le=64,
        description="Shards a shard-aware shuffle mixes at a time per stream. 2: a loader worker "
        "then holds about (8 / workers) x 3 shards (~1 GB at 512 px), within its 2 GB cache.",
    )
    workers: int | None = Field(
        None, ge=0, le=64,
        description="DataLoader worker processes per device. Unset: 4 per GPU, enough JPEG "
        "decoding to keep one fed at the backbones' sizes; 0 on the CPU, whose cores the "
        "training threads already keep busy, so a worker only competes with them. 0: decode in "
        "the training process.",
    )
    device: Device = "auto"
    amp: bool = Field(
        True, description="Mixed precision on CUDA (bf16 where supported). On: faster, and about "
        "half the activation memory; the CPU always trains in fp32."
    )
    channels_last: bool = Field(
        True, description="channels_last memory format. On: faster convs on tensor-core GPUs."
    )
    compile: bool = Field(
        False, description="torch.compile the model (CUDA). Off: its slow first step outweighs "
        "the gain on short runs."
    )
    resume: bool = Field(
        False, description="Continue from the last epoch checkpoint of this run. Off: a run "
        "starts fresh unless asked."
    )
    log_every: int = Field(
        50, ge=1,
        description="Log throughput and ETA every N steps. 50: a line every few seconds to a "
        "minute, readable in a flow run's log.",
    )

    @field_validator("weights", "ema_decay", "min_precision", "patience", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return None if v == "" else v

    @field_validator("ema_decay", mode="before")
    @classmethod
    def _zero_is_no_ema(cls, v):
        return None if v == 0 else v

    @model_validator(mode="after")
    def _mixing_keeps_text_with_its_image(self) -> TrainConfig:
        if self.inputs in ("text", "image+text") and (self.mixup or self.cutmix):
            raise ValueError("mixup / cutmix blend two products' images, but a model that reads "
                             "text would see one product's text with both: set them to 0 or "
                             "inputs 'image'")
        return self

    @model_validator(mode="after")
    def _room_to_train(self) -> TrainConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} "
                             "leave less than 10% to train on; lower one of them")
        return self


# TrainConfig fields that, left unset, take the backbone's own value: the training defaults a
# registry entry carries (tagger/backbones.py; tagger/train/run.py resolve_config).
FROM_BACKBONE = frozenset(f.name for f in fields(Backbone)) & set(TrainConfig.model_fields)


class TagConfig(_Config):
    """Batched inference and writing of tag tables."""

    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Inference precision. auto: bf16 on GPUs that support it (else fp16) and "
        "on CPUs with native bf16 (AVX512-BF16/AMX); fp32 elsewhere.",
    )
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="Inference runtime. auto: ONNX Runtime where inference would run in fp32 "
        "on the CPU (precision auto or fp32) and onnxruntime is installed; "
        "torch otherwise (CUDA, an explicit bf16/fp16 precision). onnx: CPU and fp32 only.",
    )
    batch_size: int = Field(
        64, ge=1, le=4096,
        description="Images per forward pass. 64: keeps a GPU busy at the backbones' sizes in "
        "inference mode, small enough for a CPU.",
    )
    workers: int = Field(
        2, ge=0, le=64,
        description="DataLoader worker processes decoding images. 2: inference needs no "
        "augmentation, so a few decoders keep up.",
    )
    device: Device = "auto"
    chunk_size: int = Field(
        10_000, ge=1,
        description="Products scored per chunk; bounds memory on huge catalogs: a chunk's rows "
        "as Python objects take about 8 KB a product until they are a table. 10,000: a full run "
        "of 300,000 products peaks at 431 MB instead of 746 MB with 50,000, in the same time.",
    )


def load_config(cls: type[_Config], path: str | Path | None = None, **overrides) -> _Config:
    """A config from an optional YAML file plus keyword overrides (None values ignored)."""
    data = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return cls.model_validate(data)


class Settings(BaseSettings):
    """Settings of the machine a run is on, not of the run: read from `TAGGER_*` environment
    variables (e.g. TAGGER_LOCK_WAIT_S=600), so a work pool or a shell sets them once for every
    command and flow. What a run computes is in the config models above, never here."""

    model_config = SettingsConfigDict(env_prefix="TAGGER_", frozen=True, extra="ignore")

    lake: str = Field(
        "lake", description="Default lake root of the flows (a folder or s3://bucket/prefix) "
        "when a flow run is given none. 'lake': a folder in the working directory, so a local "
        "run needs no setup.")
    lock_wait_s: float = Field(
        0.0, ge=0, description="Seconds a run waits for another run's lake lock before it "
        "refuses (0: refuse at once, so a stuck nightly run is noticed, not queued behind).")
    s3_max_attempts: int = Field(
        8, ge=1, le=100, description="Attempts per S3 request (botocore adaptive retries: "
        "throttling, 5xx, dropped connections); 8 rides out a minute of throttling.")
    onnx_cache: str | None = Field(
        None, description="Folder of ONNX exports. Unset: $XDG_CACHE_HOME or ~/.cache, in "
        "product-tagger/onnx: local to the machine, never the lake (scoring only reads the lake).")
    dask_address: str | None = Field(
        None, description="Dask scheduler of the tag-sharded and ingest-sharded flows "
        "(tcp://host:8786). Unset: a local cluster of dask_workers processes, so the flows run "
        "on one machine as they are.")
    dask_workers: int = Field(
        2, ge=1, le=256, description="Processes of the local Dask cluster that the "
        "tag-sharded and ingest-sharded flows start when dask_address is unset. 2: fits the "
        "smallest worker machine; raise it on bigger ones.")


def load_settings() -> Settings:
    """The TAGGER_* settings as the environment has them now (read on every call: tests and
    long-lived workers may change the environment). A bad value is a ValueError naming the
    variable, its value and what would be accepted."""
    try:
        return Settings()
    except ValidationError as e:
        raise ValueError("; ".join(_setting_error(err) for err in e.errors())) from None


def _setting_error(err) -> str:
    name = str(err["loc"][0]) if err["loc"] else "?"
    variable = Settings.model_config["env_prefix"] + name.upper()
    field = Settings.model_fields.get(name)
    default = f"unset it for the default {field.default!r}, " if field is not None else ""
    return (f"Bad environment variable {variable}={err.get('input')!r}: {err['msg']} "
            f"({default}see Settings.{name} in tagger/config.py)")
