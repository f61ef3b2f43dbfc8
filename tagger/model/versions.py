"""Model versions under `models/<version>/`: weights (safetensors) and `card.json`.

A version exists once its card.json exists: the card is written last, so a reader never
sees a version whose weights are still uploading (same rule locally and on S3). A version
folder copied into another lake's `models/` works there: nothing refers to the old lake.
The card is declared in catalog_schemas/card.py and validated whenever it is read.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from catalog_schemas.card import ModelCard, parse_card
from tagger.io.lock import lake_lock
from tagger.io.storage import Storage
from tagger.lake import CARD, MODELS, WEIGHTS, model_path

if TYPE_CHECKING:  # torch is imported by the functions that build a model: reading cards needs none
    from torch import nn

log = logging.getLogger(__name__)

class ModelNotFound(LookupError):
    pass


def new_version(now: datetime | None = None) -> str:
    """Sortable, unique version string: 20261123-142501-3f9a."""
    now = now or datetime.now(timezone.utc)
    salt = hashlib.sha1(now.isoformat().encode()).hexdigest()[:4]
    return now.strftime("%Y%m%d-%H%M%S-") + salt


def list_versions(storage: Storage) -> list[str]:
    """Committed versions, oldest first."""
    return sorted(
        p.split("/")[1] for p in storage.list(MODELS) if p.count("/") == 2 and p.endswith(CARD)
    )


def latest_version(storage: Storage) -> str:
    versions = list_versions(storage)
    if not versions:
        raise ModelNotFound(
            f"No model in {storage.url(MODELS)}. Train one first: tagger train --lake {storage.uri}"
        )
    return versions[-1]


def register_model(storage: Storage, model: nn.Module, card: ModelCard) -> ModelCard:
    """Write the weights, then the card with their sha256; returns the card as written."""
    from tagger.model.weights import save_weights

    version = card.version
    with lake_lock(storage, "models", owner=version), tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        local = Path(tmp) / WEIGHTS
        save_weights(model, local)
        card = card.model_copy(update={"weights_sha256": hashlib.sha256(local.read_bytes()).hexdigest()})
        storage.upload(local, model_path(version, WEIGHTS))
        storage.write_bytes(model_path(version, CARD), card.to_json())
    log.info("registered model %s at %s", version, storage.url(model_path(version)))
    return card


def read_card(storage: Storage, version: str | None = None) -> ModelCard:
    """The validated card of a version (default: the newest); ModelNotFound names the known
    versions, CardError (a ValueError) says what is wrong with a card that is not usable."""
    version = version or latest_version(storage)
    path = model_path(version, CARD)
    if not storage.exists(path):
        known = ", ".join(list_versions(storage)[-10:]) or "none"
        raise ModelNotFound(f"No model version {version!r} in {storage.url(MODELS)}. Known: {known}")
    return parse_card(storage.read_bytes(path), storage.url(path))


def load_model(storage: Storage, version: str | None = None) -> tuple[nn.Module, ModelCard]:
    """(model in eval mode on CPU, card) of a version (default: the newest). The model
    scores as the card says: wrapped in its test-time augmentation (with_tta) when it has one."""
    from tagger.model.factory import create_model, with_tta
    from tagger.model.weights import load_weights

    card = read_card(storage, version)
    model = create_model(card.backbone, card.taxonomy.num_outputs, pretrained=False,
                         inputs=card.inputs, text=card.text)
    with storage.local_copy(model_path(card.version, WEIGHTS)) as local:
        digest = hashlib.sha256(Path(local).read_bytes()).hexdigest()
        if card.weights_sha256 not in (None, digest):
            raise ValueError(
                f"Weights of model {card.version} do not match the sha256 in its card: "
                "the file was changed or is incomplete."
            )
        load_weights(model, local)
    if card.image_weight:
        from tagger.model.text import set_image_weight

        set_image_weight(model, card.image_weight_vector())
    return with_tta(model.eval(), card.tta), card
