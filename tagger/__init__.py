"""product-tagger: tag e-commerce products with visual attributes from their photos.

The entry points, one per stage (each room's own module has the rest)::

    from tagger import ingest_catalog, train_model, tag_catalog, evaluate_model, load_config

They are imported when first used (as `timm.data` re-exports its pieces, but lazily): a
command that only ingests never pays for importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_ENTRY_POINTS = {
    "ingest_catalog": "tagger.ingest.run",
    "train_model": "tagger.train.run",
    "tag_catalog": "tagger.tag.run",
    "evaluate_model": "tagger.model.evaluate",
    "load_config": "tagger.config",
    "load_settings": "tagger.config",
    "IngestConfig": "tagger.config",
    "TrainConfig": "tagger.config",
    "TagConfig": "tagger.config",
    "open_storage": "tagger.io.storage",
}
__all__ = sorted(_ENTRY_POINTS)


def __getattr__(name: str):
    module = _ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tagger' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ENTRY_POINTS))
