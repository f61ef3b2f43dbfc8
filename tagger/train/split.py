"""What a training run learns from: the lake's labelled products, split three ways.

train is learned from; validation is where every choice is made (the EMA or raw weights,
temperatures, thresholds, the precision target's cut); test is held out from all of it, so
its figures are the ones a user can trust and the card and report lead with them.

Products are read sorted by id and split by iterative stratification with a fixed seed, so a
rerun on the same data splits the same way and rare values land on both sides. The snapshot
hash names what was trained on (ids, images, labels): it goes on the model card and into the
checkpoint key, so a resume never continues on other data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from catalog_schemas.card import TextConfig
from catalog_schemas.taxonomy import Taxonomy
from tagger.corrections import load_corrections
from tagger.data.dataset import ProductImages
from tagger.data.transforms import create_transforms
from tagger.io.storage import Storage
from tagger.labels import encode_labels
from tagger.lake import read_lake_taxonomy, read_products


@dataclass
class TrainingData:
    """The labelled products of a lake, in product-id order, with their multi-hot targets."""

    taxonomy: Taxonomy
    product_ids: list[str]
    shards: list[str]
    hashes: list[str]
    targets: np.ndarray
    mask: np.ndarray
    snapshot: str  # hash of what was trained on: ids, images, texts and labels
    texts: list[str | None] | None = None  # the products' text; None: no product has any
    more: list | None = None  # the products' more_images cells; None: no product has several

    @property
    def has_text(self) -> bool:
        return self.texts is not None


def load_training_data(storage: Storage) -> TrainingData:
    """Labelled products of the lake (sorted by id, so splits are reproducible), with the
    reviewers' corrections in where they win (tagger.corrections)."""
    taxonomy = read_lake_taxonomy(storage)
    products = read_products(storage).sort_by("product_id").to_pylist()
    corrections = load_corrections(storage)
    labels = [corrections.apply(p["product_id"], p["labels"], p["updated_at"])[0] for p in products]
    targets, mask = encode_labels(taxonomy, labels, [p["category"] for p in products])
    keep = mask.any(axis=1)
    products = [p for p, k in zip(products, keep) if k]
    digest = hashlib.sha256()
    for p, lab in zip(products, (lab for lab, k in zip(labels, keep) if k)):
        # lakes without text or more images hash as before
        text = f"|{p['text']}" if p.get("text") else ""
        more = "".join(f"+{m['image_hash']}" for m in p.get("more_images") or ())
        digest.update(f"{p['product_id']}|{p['image_hash']}{more}|{sorted(lab.items())}{text}\n".encode())
    texts = [p.get("text") for p in products]
    more = [p.get("more_images") for p in products]
    return TrainingData(
        taxonomy, [p["product_id"] for p in products], [p["image_shard"] for p in products],
        [p["image_hash"] for p in products], targets[keep], mask[keep], digest.hexdigest()[:16],
        texts if any(texts) else None, more if any(more) else None,
    )


def split_train_val(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label stratified split (iterative stratification), so rare values land in both."""
    if len(targets) < 4:
        raise ValueError(f"Need at least 4 labelled products to train, found {len(targets)}.")
    return _stratified(np.arange(len(targets)), targets, val_fraction, seed)


@dataclass(frozen=True)
class Split:
    """Row indices of TrainingData, sorted, disjoint, together every row."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray  # empty with test_fraction 0


def split_products(targets: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """train / validation / test, each multi-label stratified. The test split is taken first,
    then validation from the rest (its share of the rest scaled so that it is val_fraction of
    the whole). With test_fraction 0 the split is split_train_val's, as before test splits."""
    if test_fraction <= 0:
        train, val = split_train_val(targets, val_fraction, seed)
        return Split(train, val, np.zeros(0, dtype=train.dtype))
    if len(targets) < 6:
        raise ValueError(f"Need at least 6 labelled products to train with a test split, found "
                         f"{len(targets)} (or set test_fraction 0).")
    rest, test = _stratified(np.arange(len(targets)), targets, test_fraction, seed)
    train, val = _stratified(rest, targets[rest], val_fraction / (1 - test_fraction), seed)
    return Split(train, val, test)


def _stratified(rows: np.ndarray, targets: np.ndarray, fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) of `rows`, `fraction` of them held out, stratified on `targets`."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    kept, held = next(splitter.split(np.zeros(len(rows)), targets.astype(int)))
    return np.sort(rows[kept]), np.sort(rows[held])


def create_datasets(lake: str, data: TrainingData, split: Split, image_size: int,
                    text: TextConfig | None = None) -> tuple[ProductImages, ProductImages, ProductImages]:
    """(training, validation, test) datasets of the split: augmented for training, plain for
    the other two; with `text`, each product's text encoded beside its image. Training sees
    one of a product's images per visit, drawn at random; the other two score all of them
    (ProductImages `views`)."""

    def subset(idx: np.ndarray, train: bool) -> ProductImages:
        tf = create_transforms(image_size, train=train)
        texts = None if text is None or data.texts is None else [data.texts[i] for i in idx]
        more = None if data.more is None else [data.more[i] for i in idx]
        return ProductImages(lake, [data.shards[i] for i in idx], [data.hashes[i] for i in idx], tf,
                             data.targets[idx], data.mask[idx], texts=texts, text_config=text,
                             more=more, views="sample" if train else "all")

    return subset(split.train, True), subset(split.validation, False), subset(split.test, False)
