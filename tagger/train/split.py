"""What a training run learns from: the lake's labelled products, split into train and validation.

Products are read sorted by id and split by iterative stratification with a fixed seed, so a
rerun on the same data splits the same way and rare values land on both sides. The snapshot
hash names what was trained on (ids, images, labels): it goes on the model card and into the
checkpoint key, so a resume never continues on other data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from catalog_schemas.taxonomy import Taxonomy
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
    snapshot: str  # hash of what was trained on: ids, images and labels


def load_training_data(storage: Storage) -> TrainingData:
    """Labelled products of the lake (sorted by id, so splits are reproducible)."""
    taxonomy = read_lake_taxonomy(storage)
    products = read_products(storage).sort_by("product_id").to_pylist()
    labels = [dict(p["labels"]) for p in products]
    targets, mask = encode_labels(taxonomy, labels, [p["category"] for p in products])
    keep = mask.any(axis=1)
    products = [p for p, k in zip(products, keep) if k]
    digest = hashlib.sha256()
    for p in products:
        digest.update(f"{p['product_id']}|{p['image_hash']}|{sorted(p['labels'])}\n".encode())
    return TrainingData(
        taxonomy, [p["product_id"] for p in products], [p["image_shard"] for p in products],
        [p["image_hash"] for p in products], targets[keep], mask[keep], digest.hexdigest()[:16],
    )


def split_train_val(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label stratified split (iterative stratification), so rare values land in both."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if len(targets) < 4:
        raise ValueError(f"Need at least 4 labelled products to train, found {len(targets)}.")
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(targets)), targets.astype(int)))
    return np.sort(train_idx), np.sort(val_idx)


def create_datasets(lake: str, data: TrainingData, train_idx: np.ndarray, val_idx: np.ndarray,
                    image_size: int) -> tuple[ProductImages, ProductImages]:
    """(training, validation) datasets of the split: augmented for training, plain for validation."""

    def subset(idx: np.ndarray, train: bool) -> ProductImages:
        tf = create_transforms(image_size, train=train)
        return ProductImages(lake, [data.shards[i] for i in idx], [data.hashes[i] for i in idx], tf,
                             data.targets[idx], data.mask[idx])

    return subset(train_idx, True), subset(val_idx, False)
