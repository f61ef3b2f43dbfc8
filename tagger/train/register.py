"""After the last epoch: validate, choose thresholds, write the card and report, register.

The weights come in chosen: those of the best epoch (tagger.train.epochs: raw or EMA, the
highest validation mAP), with that choice in `RunFacts.ema_choice`. On the validation
logits, in this order: a fused model's photo weight per attribute (tagger.quality.
image_weight), the prior shift (tagger.quality.prior_shift), the per-attribute
temperatures (`calibrate`), then the decision thresholds (max F1 per value, or fixed)
and, with `min_precision`, the auto-publish thresholds. The model card records all of it
with the resolved config, the data snapshot and the epoch history; the report and the
weights go next to it under models/<version>/, with the training curves (curves.png,
embedded in report.md) and the TensorBoard event files (tensorboard/).

With `tta` flip, validation and test are scored with the flip wrapper (tagger.model.factory
with_tta), so temperatures and thresholds are tuned on the averaged logits every scorer of
the card computes; the weights registered stay the plain model's. Per-epoch validation
(tagger.train.epochs) scores without TTA: it only ranks epochs, and half the cost matters
there, once per epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import timm
import torch
from torch import nn

from catalog_schemas.card import DataConfig, ModelCard
from tagger.config import TrainConfig
from tagger.data.dataset import ProductImages
from tagger.data.loader import create_loader
from tagger.data.transforms import BatchNormalize
from tagger.data.views import POOLINGS
from tagger.io.storage import Storage
from tagger.lake import model_path
from tagger.backbones import get_backbone
from tagger.model.factory import fold_into_output_bias, with_tta
from tagger.model.predict import predict_scores
from tagger.labels import single_slices, softmax_slices, values_from_vector
from tagger.model.text import fused_network, image_weighted, set_image_weight
from tagger.model.versions import new_version, register_model
from tagger.quality.calibration import apply_temperature, fit_temperatures, temperature_vector
from tagger.quality.evaluation import (
    Evaluated,
    calibration_metrics,
    compute_evaluation,
    write_evaluation_report,
)
from tagger.quality.plots import plot_training_curves
from tagger.quality.image_weight import choose_image_weight
from tagger.quality.prior_shift import choose_prior_shift
from tagger.quality.report import card_summary, render_training_curves
from tagger.train.curves import EventLog
from tagger.train.epochs import mean_ap, ranked
from tagger.quality.thresholds import choose_abstention, precision_thresholds, tune_thresholds
from tagger.train.split import TrainingData


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFacts:
    """What the registration needs to know about the run that trained the model."""

    config: TrainConfig  # resolved (tagger.train.run.resolve_config)
    data: TrainingData
    val_idx: np.ndarray  # rows of `data` in the validation split
    val_ds: ProductImages
    n_train: int
    pos_weight: np.ndarray  # per output, as trained with
    data_config: DataConfig
    device: torch.device
    world_size: int
    history: list[dict]  # one entry per epoch
    seconds: float  # from the start of train_model to validation
    test_idx: np.ndarray | None = None  # rows of `data` in the test split (none: no test split)
    test_ds: ProductImages | None = None
    best_epoch: int | None = None  # the epoch whose weights are registered (None: the last)
    ema_choice: dict | None = None  # the best epoch's raw-vs-EMA choice (EmaChoice fields)
    events: EventLog | None = None  # TensorBoard event files to store with the version
    class_weight: np.ndarray | None = None  # per output, as trained with (softmax heads)


@dataclass(frozen=True)
class Validation:
    """The validation split scored by the weights to register, and what was chosen on it."""

    model: nn.Module  # the raw weights or their EMA, whichever validated better
    targets: np.ndarray
    mask: np.ndarray
    scores: np.ndarray  # calibrated
    temperatures: dict[str, float]  # per attribute; empty without calibration
    thresholds: np.ndarray
    auto_thresholds: np.ndarray | None
    ema: dict  # the EMA choice for the card; empty without EMA
    decisions: np.ndarray
    metrics: dict
    image_pooling: str = "mean"  # how a product's several images' logits were pooled
    prior_shift: dict[str, float] = field(default_factory=dict)  # per softmax attribute: tau (tagger.quality.prior_shift)
    image_weight: dict[str, float] = field(default_factory=dict)  # per single attribute: the photo's weight


def choose_thresholds(config: TrainConfig, scores, targets, mask) -> tuple[np.ndarray, np.ndarray | None]:
    """(decision thresholds, auto-publish thresholds or None) per output.

    With min_precision, a value's tags are emitted from min(decision, auto-publish)
    threshold: where the precision target is met below the max-F1 cut, there is no review
    band; otherwise tags between the two are marked needs_review."""
    if config.thresholds == "fixed":
        thresholds = np.full(scores.shape[1], config.fixed_threshold, dtype=np.float32)
    else:
        thresholds = tune_thresholds(scores, targets, mask)
    if config.min_precision is None:
        return thresholds, None
    auto = precision_thresholds(scores, targets, mask, config.min_precision)
    return np.minimum(thresholds, auto), auto


def validate(model: nn.Module, run: RunFacts) -> Validation:
    """Score the validation split with the weights to register, calibrate, choose the
    thresholds and compute the metrics. The raw-vs-EMA choice was made per epoch
    (tagger.train.epochs) and comes in `run.ema_choice`."""
    config, taxonomy = run.config, run.data.taxonomy
    targets, mask = run.data.targets[run.val_idx], run.data.mask[run.val_idx]
    views = _split_logits(model, run.val_ds, run, "validate")
    pooling = choose_pooling(config.image_pooling, run.val_ds, views, targets, mask, _heads(run))
    image_weight = {}
    if config.image_dropout > 0 and fused_network(model) is not None and single_slices(taxonomy):
        image_weight, views = _weigh_the_photo(model, views, run, pooling, targets, mask)
    logits = run.val_ds.pool(views, pooling)
    taus = {}
    if config.prior_shift == "auto" and _heads(run) and run.class_weight is not None:
        # a constant per output: it commutes with the pooling and the TTA mean, and the
        # test split and every scorer get it from the weights
        shift, taus = choose_prior_shift(logits, targets, mask, single_slices(taxonomy), run.class_weight)
        fold_into_output_bias(model, shift)
        logits = logits + shift
        log.info("prior shift per attribute (share of the class weighting undone): %s",
                 ", ".join(f"{k} {v:g}" for k, v in taus.items()))
    temperatures = (fit_temperatures(logits, targets, mask, taxonomy.slices, _heads(run))
                    if config.calibrate else {})
    scores = _calibrated(logits, temperatures, run)
    thresholds, auto = choose_thresholds(config, scores, targets, mask)
    softmax = _heads(run)
    if config.thresholds != "fixed" and softmax:
        heads = {name: sl for name, sl in taxonomy.slices.items() if sl in softmax}
        thresholds, abstains = choose_abstention(
            scores, thresholds, targets, mask, heads, lambda s, t, m: choose_thresholds(config, s, t, m)[0])
        log.info("softmax attributes that abstain below their thresholds: %s",
                 ", ".join(name for name, a in abstains.items() if a) or "none")
    decisions, metrics = _evaluate_split(logits, scores, targets, mask, temperatures, thresholds, auto, run)
    metrics["split"] = "validation (thresholds were tuned on it: F1 figures are optimistic, AP is not)"
    return Validation(model, targets, mask, scores, temperatures, thresholds, auto,
                      run.ema_choice or {}, decisions, metrics, pooling, taus, image_weight)


def _weigh_the_photo(model: nn.Module, views: np.ndarray, run: RunFacts, pooling: str,
                     targets: np.ndarray, mask: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """(the photo's weight per single attribute, the validation views' logits with it) of
    a fused model, which is set to it (tagger.quality.image_weight). The logits are linear
    in the weight, so one more pass with the image part off gives every candidate."""
    taxonomy = run.data.taxonomy
    with image_weighted(model, np.zeros(taxonomy.num_outputs, np.float32)):
        title_only = _split_logits(model, run.val_ds, run, "validate, the title alone")
    photo = views - title_only
    chosen = choose_image_weight(lambda w: run.val_ds.pool(title_only + w * photo, pooling),
                                 targets, mask, single_slices(taxonomy))
    weight = temperature_vector(chosen, taxonomy.slices, taxonomy.num_outputs)  # per output, 1 elsewhere
    set_image_weight(model, weight)
    log.info("the photo's weight per attribute against the title: %s",
             ", ".join(f"{k} {v:g}" for k, v in chosen.items()))
    return chosen, title_only + weight * photo


def choose_pooling(setting: str, ds: ProductImages, logits: np.ndarray, targets: np.ndarray,
                   mask: np.ndarray, heads: tuple[slice, ...]) -> str:
    """TrainConfig.image_pooling resolved: auto takes the pooling of a product's images'
    logits with the higher validation mAP (mean on a tie, and where no product has
    several images)."""
    if setting != "auto":
        return setting
    if not ds.views.several:
        return "mean"
    found = {how: mean_ap(targets, mask, ranked(ds.pool(logits, how), heads)) for how in POOLINGS}
    log.info("validation mAP by image pooling: %s", ", ".join(f"{k} {v:.4f}" for k, v in found.items()))
    return max(POOLINGS, key=lambda how: (found[how], how == "mean"))


def score_test_split(val: Validation, run: RunFacts) -> Evaluated | None:
    """The test split scored by the registered weights with everything chosen on validation
    (temperatures, thresholds, auto-publish thresholds) and chosen nothing itself: the
    figures a user can trust. None without a test split."""
    if run.test_ds is None or not len(run.test_ds):
        return None
    taxonomy = run.data.taxonomy
    logits = run.test_ds.pool(_split_logits(val.model, run.test_ds, run, "test"), val.image_pooling)
    targets, mask = run.data.targets[run.test_idx], run.data.mask[run.test_idx]
    scores = _calibrated(logits, val.temperatures, run)
    decisions, metrics = _evaluate_split(logits, scores, targets, mask, val.temperatures,
                                         val.thresholds, val.auto_thresholds, run)
    metrics["split"] = ("test (held out from training and from every choice: thresholds, "
                        "temperatures and the EMA choice were made on validation)")
    return Evaluated(taxonomy, targets, mask, scores, decisions, metrics,
                     values_from_vector(taxonomy, val.thresholds),
                     None if val.auto_thresholds is None else values_from_vector(taxonomy, val.auto_thresholds))


def _heads(run: RunFacts) -> tuple[slice, ...]:
    return softmax_slices(run.data.taxonomy, run.config.head)


def _split_logits(model: nn.Module, ds: ProductImages, run: RunFacts, desc: str) -> np.ndarray:
    """Logits of each image of a split (ProductImages views="all") as the card's scorers
    compute them: with the configured TTA."""
    config = run.config
    loader = create_loader(ds, config.batch_size, config.workers, device=run.device)
    return predict_scores(with_tta(model, config.tta), loader, run.device,
                          channels_last=config.channels_last, amp=config.amp, desc=desc, logits=True,
                          normalize=BatchNormalize.from_config(run.data_config, reuse=True))


def _calibrated(logits: np.ndarray, temperatures: dict[str, float], run: RunFacts) -> np.ndarray:
    tax = run.data.taxonomy
    return apply_temperature(logits, temperature_vector(temperatures, tax.slices, tax.num_outputs),
                             _heads(run))


def _evaluate_split(logits, scores, targets, mask, temperatures: dict[str, float], thresholds,
                    auto_thresholds, run: RunFacts) -> tuple[np.ndarray, dict]:
    """(decisions, metrics with calibration) of one split, as validation and test share them."""
    heads = _heads(run)
    decisions, metrics = compute_evaluation(run.data.taxonomy, targets, mask, scores, thresholds,
                                            auto_thresholds, run.config.min_precision,
                                            argmax_slices=heads)
    metrics["calibration"] = calibration_metrics(logits, scores, targets, mask, temperatures, heads)
    return decisions, metrics


def build_card(version: str, run: RunFacts, val: Validation, lake: str,
               tested: Evaluated | None = None) -> ModelCard:
    """The model card of `version`: what was trained, how, on what, and how it validated."""
    config, data, taxonomy = run.config, run.data, run.data.taxonomy
    return ModelCard(
        version=version,
        created_at=datetime.now(timezone.utc).isoformat(),
        backbone=config.backbone,
        timm_name=get_backbone(config.backbone).timm_name,
        head=config.head,
        tta=config.tta,
        inputs=config.inputs,
        text=run.val_ds.text_config,
        image_pooling=val.image_pooling,
        image_size=config.image_size,
        data_config=run.data_config,
        taxonomy=taxonomy,
        thresholds=values_from_vector(taxonomy, val.thresholds),
        auto_thresholds=(None if val.auto_thresholds is None
                         else values_from_vector(taxonomy, val.auto_thresholds)),
        min_precision=config.min_precision,
        temperature=val.temperatures,
        prior_shift=val.prior_shift,
        image_weight=val.image_weight,
        ema=val.ema or None,
        pos_weight=values_from_vector(taxonomy, run.pos_weight),
        metrics=val.metrics,
        test_metrics=None if tested is None else tested.metrics,
        config=config.model_dump(mode="json"),
        data=dict(snapshot=data.snapshot, products=len(data.product_ids), train=run.n_train,
                  validation=len(run.val_idx), test=0 if run.test_idx is None else len(run.test_idx),
                  lake=lake),
        history=run.history,
        best_epoch=run.best_epoch,
        training=dict(device=str(run.device), world_size=run.world_size, seconds=round(run.seconds, 1),
                      torch=torch.__version__, timm=timm.__version__),
    )


def evaluate_and_register(storage: Storage, model: nn.Module, run: RunFacts) -> str:
    """Validate, write the report and register the model with its card; returns the version."""
    val = validate(model, run)
    tested = score_test_split(val, run)
    version = new_version()
    card = build_card(version, run, val, storage.uri, tested)
    validated = Evaluated(run.data.taxonomy, val.targets, val.mask, val.scores, val.decisions,
                          val.metrics, card.thresholds, card.auto_thresholds)
    write_evaluation_report(storage, model_path(version), f"Model {version}", card_summary(card),
                            tested or validated, tuned_on=validated if tested else None)
    _store_training_curves(storage, model_path(version), card, run.events)
    register_model(storage, val.model, card)
    split, m = ("test", tested.metrics) if tested else ("validation", val.metrics)
    log.info("model %s: micro-F1 %.3f macro-F1 %.3f mAP %.3f on %d %s products", version,
             m["micro_f1"] or 0, m["macro_f1"] or 0, m["mAP"] or 0,
             len(run.test_idx) if tested else len(run.val_idx), split)
    return version


def _store_training_curves(storage: Storage, prefix: str, card: ModelCard, events: EventLog | None) -> None:
    """curves.png next to report.md, embedded in it, and the TensorBoard event files."""
    if card.history:
        storage.write_bytes(f"{prefix}/curves.png", plot_training_curves(card.history))
        report = storage.read_bytes(f"{prefix}/report.md").decode()
        storage.write_bytes(f"{prefix}/report.md",
                            (report + render_training_curves(card, "curves.png")).encode())
    if events is not None:
        events.upload(storage, prefix)
