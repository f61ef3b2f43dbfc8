"""`tagger label-issues`: curated labels that are probably wrong, into catalog/label_issues/.

Where the out-of-sample scores come from: the registered model's own validation and test
splits. The split is a pure function of the labels and the card's seed and fractions
(tagger.train.split), so it is recomputed exactly, and those products' labels were never
learned from: the model's scores for them are out-of-sample by construction, at the cost
of one scoring pass over ~30% of the labelled products and no training. The other honest way,
K-fold cross-validation, trains K models to cover every product; a lake whose labels changed
since the model was trained (new products, corrections) would need it, so such a lake is
refused with the remedy (retrain, then look again) instead of being scored with a model that
learned the very labels it would judge.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from catalog_schemas.tables import LABEL_ISSUES
from tagger.config import TagConfig, TrainConfig
from tagger.io.lock import lake_lock
from tagger.io.storage import Storage, open_storage, read_table_or_empty, write_table
from tagger.lake import LABEL_ISSUES_PATH
from tagger.model.production import resolve_version
from tagger.model.scoring import ImageScorer
from tagger.model.versions import load_model
from tagger.quality.label_issues import compute_label_issues
from tagger.train.split import TrainingData, load_training_data, split_products

log = logging.getLogger(__name__)


@dataclass
class LabelIssuesResult:
    run_id: str
    model_version: str
    checked_products: int  # the held-out products whose labels could be judged
    labelled_products: int  # every labelled product of the lake
    issues: int = 0
    per_attribute: dict[str, int] = field(default_factory=dict)
    path: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def held_out_rows(data: TrainingData, card_config: dict, snapshot: str, version: str) -> dict[str, np.ndarray]:
    """{'validation': rows, 'test': rows} of `data` the model never trained on: its own split,
    recomputed. A lake whose labelled products differ from the card's snapshot is a ValueError."""
    if data.snapshot != snapshot:
        raise ValueError(
            f"Model {version} was trained on another snapshot of the lake's labels ({snapshot}, "
            f"the lake has {data.snapshot} now: products or labels changed since). Its held-out "
            "products are not known any more, so its scores are not out-of-sample. Train a new "
            "version (tagger train), then run tagger label-issues --model VERSION with it.")
    def setting(name: str):  # cards of older versions may lack a field: its default then
        return card_config.get(name, TrainConfig.model_fields[name].default)

    split = split_products(data.targets, setting("val_fraction"), setting("test_fraction"), setting("seed"))
    return {"validation": split.validation, "test": split.test}


def find_label_issues(lake: str, *, model_version: str | None = None, config: TagConfig | None = None,
                      run_id: str | None = None) -> LabelIssuesResult:
    """Score the model's held-out products, run cleanlab per attribute and replace the
    label_issues table with what it flags (lowest label quality first)."""
    t0 = time.perf_counter()
    storage = open_storage(lake)
    model, card = load_model(storage, resolve_version(storage, model_version))
    data = load_training_data(storage)
    if data.taxonomy.outputs != card.taxonomy.outputs:
        raise ValueError(f"Model {card.version} has another taxonomy than the lake's catalog: "
                         "train a new version on it first (tagger train).")
    held = held_out_rows(data, card.config, card.data.snapshot, card.version)
    rows = np.concatenate(list(held.values()))
    split_of = [name for name, r in held.items() for _ in r]
    run_id = run_id or f"issues-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    scorer = ImageScorer(model, card, config or TagConfig())
    scores = scorer.score(lake, [data.shards[i] for i in rows], [data.hashes[i] for i in rows],
                          desc="label issues",
                          texts=[data.texts[i] for i in rows] if data.texts is not None else
                          [None] * len(rows),
                          more=None if data.more is None else [data.more[i] for i in rows]).scores
    issues = compute_label_issues(card.taxonomy, data.targets[rows], data.mask[rows], scores,
                                  scorer.arrays.thresholds)
    now = datetime.now(timezone.utc)
    table = pa.table(dict(
        product_id=[data.product_ids[rows[i.row]] for i in issues],
        attribute=[i.attribute for i in issues], given=[list(i.given) for i in issues],
        suggested=[list(i.suggested) for i in issues], score=[i.score for i in issues],
        split=[split_of[i.row] for i in issues], model_version=[card.version] * len(issues),
        run_id=[run_id] * len(issues), found_at=[now] * len(issues)), schema=LABEL_ISSUES)
    with lake_lock(storage, "catalog", owner=run_id):
        write_table(storage, LABEL_ISSUES_PATH, table)
    result = LabelIssuesResult(run_id, card.version, len(rows), len(data.product_ids), len(issues),
                               path=storage.url(LABEL_ISSUES_PATH))
    for i in issues:
        result.per_attribute[i.attribute] = result.per_attribute.get(i.attribute, 0) + 1
    result.seconds = round(time.perf_counter() - t0, 2)
    log.info("label issues: %d of %d held-out products' labels flagged (model %s) in %s",
             len(issues), len(rows), card.version, result.path)
    return result


def read_label_issues(storage: Storage) -> pa.Table:
    """The latest label-issues run's table (empty before the first)."""
    return read_table_or_empty(storage, LABEL_ISSUES_PATH, LABEL_ISSUES)
