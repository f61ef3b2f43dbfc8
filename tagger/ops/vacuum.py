"""`tagger vacuum`: delete what no table, model or run needs any more, and say how much it freed.

What goes, under the lake's catalog, models and tags locks (so no writer runs meanwhile):

- image shards the products table does not name (in image_shard or more_images), once they
  have been unnamed for the grace period (catalog/images/.released.json says since when;
  ingest writes it), so a reader that read the previous products table (a tag run, a
  training) keeps every shard it will open;
- checkpoints of finished runs: those whose key is a registered version's (the run was
  registered and killed before it removed its checkpoint);
- evaluation ingests (evaluations/<name>/) whose model version is gone;
- tag history partitions older than `keep_history_days` (default: keep everything).

Nothing younger than `grace` is deleted. ONNX exports are not in the lake: each machine's
cache (TAGGER_ONNX_CACHE) keeps its newest exports only (tagger.model.runtime).
"""

from __future__ import annotations

import logging
import re
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone

from pydantic import ValidationError

from tagger.config import TrainConfig
from tagger.io.lock import lake_lock
from tagger.io.storage import Storage, open_storage
from tagger.lake import (CARD, CHECKPOINTS, EVALUATIONS, HISTORY_PREFIX, IMAGES_PREFIX, MODELS,
                         PRODUCTS_PATH, named_shards, read_products, read_released)

log = logging.getLogger(__name__)
DEFAULT_GRACE = timedelta(days=1)  # longer than any tag run or training reads a table it opened


@dataclass
class VacuumResult:
    """What vacuum deleted (or would, with dry_run): paths with their bytes and why."""

    lake: str
    dry_run: bool
    deleted: list[dict] = field(default_factory=list)  # {path, bytes, why}
    kept_in_grace: int = 0
    bytes_freed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Vacuum:
    storage: Storage
    now: datetime
    grace: timedelta
    result: VacuumResult

    def old_enough(self, path: str) -> bool:
        info = self.storage.info(path)
        return info is not None and self.now - info.modified > self.grace

    def delete(self, paths: list[str], why: str) -> None:
        """Delete `paths` (or only count them in a dry run), if every one is past the grace."""
        if not paths:
            return
        if not all(self.old_enough(p) for p in paths):
            self.result.kept_in_grace += len(paths)
            return
        for p in paths:
            size = self.storage.info(p).size
            if not self.result.dry_run:
                self.storage.delete(p)
            self.result.deleted.append(dict(path=p, bytes=size, why=why))
            self.result.bytes_freed += size


def vacuum_lake(lake: str, *, grace: timedelta = DEFAULT_GRACE, keep_history_days: int | None = None,
                dry_run: bool = False, now: datetime | None = None) -> VacuumResult:
    """Delete unreferenced shards, finished checkpoints, orphaned evaluation ingests and (with
    `keep_history_days`) old tag history, all older than `grace`; under the lake's locks."""
    storage = open_storage(lake)
    v = _Vacuum(storage, now or datetime.now(timezone.utc), grace, VacuumResult(storage.uri, dry_run))
    owner = f"vacuum-{v.now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    with ExitStack() as locks:
        for name in ("catalog", "models", "tags"):  # the order every multi-lock holder uses
            locks.enter_context(lake_lock(storage, name, owner=owner))
        _vacuum_shards(v)
        _vacuum_checkpoints(v)
        _vacuum_evaluations(v)
        if keep_history_days is not None:
            _vacuum_history(v, keep_history_days)
    log.info("vacuum %s: %s %d files, %.1f MB%s", storage.uri, "would free" if dry_run else "freed",
             len(v.result.deleted), v.result.bytes_freed / 1e6,
             f"; {v.result.kept_in_grace} kept for the grace period" if v.result.kept_in_grace else "")
    return v.result


def _vacuum_shards(v: _Vacuum) -> None:
    """Shards no product names, unnamed for longer than the grace period."""
    shards = [p for p in v.storage.list(IMAGES_PREFIX) if p.endswith(".parquet")]
    if not shards or not v.storage.exists(PRODUCTS_PATH):
        return  # no products table (yet, or lost): nothing says which shards are needed
    named = named_shards(read_products(v.storage))
    released = read_released(v.storage)
    # A shard with no release time was let go before ingest noted them, or never named by a
    # committed table: it has been unnamed at least since the products table was written.
    table_time = v.storage.info(PRODUCTS_PATH).modified
    for path in shards:
        name = path.rsplit("/", 1)[-1]
        if name in named:
            continue
        since = datetime.fromisoformat(released[name]) if name in released else table_time
        if v.now - since > v.grace:
            v.delete([path], "image shard no product names")
        else:
            v.result.kept_in_grace += 1


def _registered_keys(storage: Storage) -> set[str]:
    """The checkpoint keys of the registered versions (their runs are finished)."""
    from catalog_schemas.card import parse_card
    from tagger.train.checkpoints import checkpoint_key

    keys = set()
    for path in storage.list(MODELS):
        if path.endswith(f"/{CARD}") and path.count("/") == 2:
            try:
                card = parse_card(storage.read_bytes(path), storage.url(path))
                keys.add(checkpoint_key(TrainConfig(**card.config), card.data.snapshot))
            except (ValueError, ValidationError) as e:  # an old or odd card: its checkpoint stays
                log.debug("no checkpoint key for %s: %s", path, e)
    return keys


def _vacuum_checkpoints(v: _Vacuum) -> None:
    checkpoints = _by_folder(v.storage.list(CHECKPOINTS), CHECKPOINTS)
    if not checkpoints:
        return
    finished = _registered_keys(v.storage)
    for key, paths in checkpoints.items():
        if key in finished:
            v.delete(paths, "checkpoint of a registered run")


def _vacuum_evaluations(v: _Vacuum) -> None:
    """Evaluation ingests whose model version no longer has that evaluation (deleted)."""
    evaluations = _by_folder(v.storage.list(EVALUATIONS), EVALUATIONS)
    if not evaluations:
        return
    reports = {m.group(1) for p in v.storage.list(MODELS)
               if (m := re.match(rf"{MODELS}/[^/]+/evaluations/([^/]+)/", p))}
    for name, paths in evaluations.items():
        if name not in reports:
            v.delete(paths, "evaluation ingest of a deleted model version")


def _vacuum_history(v: _Vacuum, keep_days: int) -> None:
    """Tag history partitions whose run_date is more than `keep_days` before today."""
    oldest = (v.now - timedelta(days=keep_days)).date()
    for partition, paths in _by_folder(v.storage.list(HISTORY_PREFIX), HISTORY_PREFIX).items():
        found = re.fullmatch(r"run_date=(\d{4}-\d{2}-\d{2})", partition)
        if found and date.fromisoformat(found.group(1)) < oldest:
            v.delete(paths, f"tag history older than {keep_days} days")


def _by_folder(paths: list[str], prefix: str) -> dict[str, list[str]]:
    """'<prefix>/<folder>/...' paths grouped by <folder> (files right under prefix left out)."""
    groups: dict[str, list[str]] = {}
    for p in paths:
        folder, sep, _ = p[len(prefix) + 1:].partition("/")
        if sep:
            groups.setdefault(folder, []).append(p)
    return groups
