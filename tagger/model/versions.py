"""Model versions under `models/<version>/`: weights (safetensors) and `card.json`.

A version exists once its card.json exists: the card is written last, so a reader never
sees a version whose weights are still uploading (same rule locally and on S3). A version
folder copied into another lake's `models/` works there: nothing refers to the old lake.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from torch import nn

from catalog_schemas.taxonomy import Taxonomy
from tagger.io.lock import lake_lock
from tagger.model.factory import create_model
from tagger.model.weights import load_weights, save_weights
from tagger.io.storage import Storage
from tagger.lake import CARD, MODELS, WEIGHTS

log = logging.getLogger(__name__)

REQUIRED_CARD_KEYS = ("version", "backbone", "image_size", "taxonomy", "thresholds", "data_config")


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


def register_model(storage: Storage, model: nn.Module, card: dict) -> str:
    """Write weights then the card; returns the version (card['version'] or a new one)."""
    version = card.setdefault("version", new_version())
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    assert not missing, f"model card lacks {missing}"  # our own code builds the card
    with lake_lock(storage, "models", owner=version), tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        local = Path(tmp) / WEIGHTS
        save_weights(model, local)
        card["weights_sha256"] = hashlib.sha256(local.read_bytes()).hexdigest()
        storage.upload(local, f"{MODELS}/{version}/{WEIGHTS}")
        storage.write_bytes(f"{MODELS}/{version}/{CARD}", json.dumps(card, indent=2).encode())
    log.info("registered model %s at %s", version, storage.url(f"{MODELS}/{version}"))
    return version


def read_card(storage: Storage, version: str | None = None) -> dict:
    version = version or latest_version(storage)
    path = f"{MODELS}/{version}/{CARD}"
    if not storage.exists(path):
        known = ", ".join(list_versions(storage)[-10:]) or "none"
        raise ModelNotFound(f"No model version {version!r} in {storage.url(MODELS)}. Known: {known}")
    card = json.loads(storage.read_bytes(path))
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ValueError(f"Model card {storage.url(path)} lacks {missing}: not a model of ours?")
    return card


def load_model(storage: Storage, version: str | None = None) -> tuple[nn.Module, dict]:
    """(model in eval mode on CPU, card) of a version (default: the newest)."""
    card = read_card(storage, version)
    taxonomy = Taxonomy.model_validate(card["taxonomy"])
    model = create_model(card["backbone"], taxonomy.num_outputs, pretrained=False)
    with storage.local_copy(f"{MODELS}/{card['version']}/{WEIGHTS}") as local:
        digest = hashlib.sha256(Path(local).read_bytes()).hexdigest()
        if card.get("weights_sha256") not in (None, digest):
            raise ValueError(
                f"Weights of model {card['version']} do not match the sha256 in its card: "
                "the file was changed or is incomplete."
            )
        load_weights(model, local)
    return model.eval(), card
