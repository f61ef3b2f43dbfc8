"""The lake's model of record: `models/production.json` and its promotion history.

A registered version is a candidate; one of them is production, the one `tag`, `nightly`
and `tag-sharded` use unless a version is named (resolve_version). The pointer is one small
JSON object, replaced whole by every promotion (atomic locally and on S3), holding who
promoted which version when, by which rule and why. The history is one file per promotion,
`models/production-history/<seq>.json` (S3 has no append; a file per entry never rewrites
an earlier one), and the pointer carries the sequence number of its entry: the pointer is
the commit point, so an entry written by a promotion that died before its pointer was
written is not history (history() skips it, the next promotion overwrites it).

Promotions hold the lake lock 'production' (tagger/io/lock.py) for a few small writes, so
two at once are serialised: the second waits for the first (at least PROMOTE_WAIT_S,
whatever TAGGER_LOCK_WAIT_S says) and records its own entry after it. It is not the
'models' lock: a registration holds that while its weights upload, and a promotion of
another version need not wait for it. Reading the pointer takes no lock: it is one object
written atomically, and a tag run must not be refused because a promotion is under way.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from contextlib import AbstractContextManager
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict

from tagger.config import load_settings
from tagger.io.lock import lake_lock
from tagger.io.storage import Storage
from tagger.lake import CARD, MODELS, model_path
from tagger.model.versions import ModelNotFound, list_versions, read_card

log = logging.getLogger(__name__)

PRODUCTION_PATH = f"{MODELS}/production.json"
HISTORY_PREFIX = f"{MODELS}/production-history"
PROMOTE_WAIT_S = 60.0  # a promotion holds the lock for milliseconds: waiting is cheap

# Rules a promotion names (Promotion.rule): who or what decided.
FIRST_MODEL = "first model"  # the lake's only version, promoted so a first night works
EXISTING_LAKE = "existing lake"  # a lake from before production existed: its newest version
GATE = "gate"  # after training, the candidate passed the promotion gate (tagger/train/gate.py)
MANUAL = "manual"  # `tagger promote` or the promote flow
ROLLBACK = "rollback"  # a manual promotion of a version that was production before


class Promotion(BaseModel):
    """One promotion: the pointer's content and one history entry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int  # 1 for the lake's first promotion
    version: str
    promoted_at: str  # ISO 8601, UTC
    by: str  # a person (user@host) or a run
    rule: str  # FIRST_MODEL, EXISTING_LAKE, GATE, MANUAL, ROLLBACK
    reason: str = ""
    previous: str | None = None  # the version that was production before


class PromotionConflict(RuntimeError):
    """Production changed between a decision and its promotion (another promotion won)."""


def default_by() -> str:
    """Who promotes from this process: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def read_production(storage: Storage) -> Promotion | None:
    """The current pointer, or None before the lake's first promotion."""
    if not storage.exists(PRODUCTION_PATH):
        return None
    return Promotion.model_validate_json(storage.read_bytes(PRODUCTION_PATH))


def production_version(storage: Storage) -> str | None:
    """The production version, or None before the lake's first promotion."""
    current = read_production(storage)
    return current.version if current else None


def history(storage: Storage) -> list[Promotion]:
    """Every committed promotion, oldest first (the current one last)."""
    current = read_production(storage)
    if current is None:
        return []
    entries = [Promotion.model_validate_json(storage.read_bytes(p))
               for p in storage.list(HISTORY_PREFIX) if p.endswith(".json")]
    return sorted((e for e in entries if e.seq <= current.seq), key=lambda e: e.seq)


_ANY = object()


def promote(storage: Storage, version: str, *, by: str, rule: str, reason: str = "",
            expect=_ANY) -> Promotion:
    """Make `version` production; returns the new pointer. With `expect` (a version, or None
    for "no production yet"), refuse with PromotionConflict if production is no longer that:
    a decision made against one production version must not overwrite another."""
    if not storage.exists(model_path(version, CARD)):
        known = ", ".join(list_versions(storage)[-10:]) or "none"
        raise ModelNotFound(f"No model version {version!r} in {storage.url(MODELS)}. Known: {known}")
    with _lock(storage, f"promote {version} ({by})"):
        current = read_production(storage)
        if expect is not _ANY and (current.version if current else None) != expect:
            raise PromotionConflict(
                f"Production of {storage.uri} is now {current.version if current else None}, "
                f"not {expect}: not promoting {version}. Compare again, or `tagger promote {version}`.")
        return _write(storage, current, version, by, rule, reason)


def adopt_newest(storage: Storage, versions: list[str], by: str = "tagger") -> str:
    """Production where the lake has none yet: its only version ("first model") or, in a lake
    from before promotions (several versions, no pointer), the newest of `versions`, which is
    what tagging used until now ("existing lake"). Returns the production version."""
    with _lock(storage, f"adopt ({by})"):
        current = read_production(storage)
        if current is not None:  # another run promoted while we waited for the lock
            return current.version
        if not versions:
            raise ModelNotFound(f"No model in {storage.url(MODELS)}. Train one first: "
                                f"tagger train --lake {storage.uri}")
        newest = sorted(versions)[-1]
        if len(versions) == 1:
            rule, reason = FIRST_MODEL, "the lake's only model version"
        else:
            rule, reason = EXISTING_LAKE, (f"the newest of {len(versions)} versions of a lake "
                                           "without a production pointer (what tagging used)")
            log.warning("lake %s has %d model versions and no production pointer: promoting the "
                        "newest, %s (tagger promote VERSION chooses another)", storage.uri,
                        len(versions), newest)
        return _write(storage, None, newest, by, rule, reason).version


def resolve_version(storage: Storage, version: str | None = None) -> str:
    """The version to use: `version` where one is named, else production; a lake without a
    production pointer gets one first (adopt_newest)."""
    if version:
        return version
    current = production_version(storage)
    if current is not None:
        if not storage.exists(model_path(current, CARD)):
            raise ModelNotFound(f"Production model {current} of {storage.uri} is gone from "
                                f"{storage.url(MODELS)}: promote another, tagger promote VERSION "
                                f"--lake {storage.uri}")
        return current
    return adopt_newest(storage, list_versions(storage))


def _lock(storage: Storage, owner: str) -> AbstractContextManager[None]:
    return lake_lock(storage, "production", owner=owner,
                     wait=max(load_settings().lock_wait_s, PROMOTE_WAIT_S))


def _write(storage: Storage, current: Promotion | None, version: str, by: str, rule: str,
           reason: str) -> Promotion:
    """History entry first, then the pointer (the commit); the lock is held."""
    entry = Promotion(seq=(current.seq if current else 0) + 1, version=version,
                      promoted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      by=by, rule=rule, reason=reason,
                      previous=current.version if current else None)
    data = json.dumps(entry.model_dump(), indent=2).encode()
    storage.write_bytes(f"{HISTORY_PREFIX}/{entry.seq:06d}.json", data)
    storage.write_bytes(PRODUCTION_PATH, data)
    log.info("promoted model %s to production of %s (%s, by %s; was %s)", version, storage.uri,
             rule, by, entry.previous)
    return entry


def promote_version(storage: Storage, version: str, *, by: str | None = None,
                    reason: str = "") -> Promotion:
    """A promotion by hand (`tagger promote`, the promote flow): rule ROLLBACK for a version
    that was production before, MANUAL otherwise. Promoting the production version again
    changes nothing and returns its pointer, so a retried request adds no history entry."""
    by = by or default_by()
    current = read_production(storage)
    if current is not None and current.version == version:
        log.info("model %s is production of %s already (since %s)", version, storage.uri,
                 current.promoted_at)
        return current
    earlier = {p.version for p in history(storage)}
    return promote(storage, version, by=by, rule=ROLLBACK if version in earlier else MANUAL,
                   reason=reason)


def describe_versions(storage: Storage) -> list[dict]:
    """Every version, oldest first: status (production or candidate), created, backbone and
    the card's headline figures (the test split's where it has one)."""
    current = production_version(storage)
    rows = []
    for version in list_versions(storage):
        card = read_card(storage, version)
        split, m = card.headline
        rows.append(dict(version=version, status="production" if version == current else "candidate",
                         created=card.created_at, backbone=card.backbone, image_size=card.image_size,
                         split=split, **{k: None if m.get(k) is None else round(m[k], 4)
                                         for k in ("micro_f1", "macro_f1", "mAP")}))
    return rows
