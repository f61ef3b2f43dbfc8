"""The production pointer: promotions, history, rollback, the lock, and which version is used."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from tagger.io.storage import open_storage
from tagger.lake import CARD, model_path
from tagger.model import production
from tagger.model.production import (
    EXISTING_LAKE,
    FIRST_MODEL,
    MANUAL,
    ROLLBACK,
    HISTORY_PREFIX,
    PromotionConflict,
    history,
    production_version,
    promote,
    promote_version,
    resolve_version,
)
from tagger.model.versions import ModelNotFound

A, B, C = "20260101-000000-aaaa", "20260102-000000-bbbb", "20260103-000000-cccc"


def _lake(tmp_path, *versions):
    storage = open_storage(tmp_path / "lake")
    for v in versions:  # a version exists once its card exists (tagger/model/versions.py)
        storage.write_bytes(model_path(v, CARD), b"{}")
    return storage


def test_pointer_history_and_rollback(tmp_path):
    storage = _lake(tmp_path, A, B)
    assert production_version(storage) is None and history(storage) == []
    promote(storage, A, by="ann", rule=MANUAL, reason="first")
    promote_version(storage, B, by="bob", reason="better")
    back = promote_version(storage, A, by="ann", reason="B tags bags as shoes")
    assert production_version(storage) == A
    assert (back.rule, back.previous, back.seq, back.reason) == (ROLLBACK, B, 3, "B tags bags as shoes")
    assert [(p.seq, p.version, p.by, p.rule, p.previous) for p in history(storage)] == [
        (1, A, "ann", MANUAL, None), (2, B, "bob", MANUAL, A), (3, A, "ann", ROLLBACK, B)]
    pointer = json.loads(storage.read_bytes(production.PRODUCTION_PATH))
    assert pointer["version"] == A and pointer["seq"] == 3 and pointer["promoted_at"].endswith("+00:00")


def test_promoting_production_again_adds_nothing(tmp_path):
    storage = _lake(tmp_path, A)
    first = promote_version(storage, A, by="ann")
    assert promote_version(storage, A, by="bob") == first and len(history(storage)) == 1


def test_an_entry_without_its_pointer_is_not_history(tmp_path):
    """A promotion that died between its history entry and the pointer never happened."""
    storage = _lake(tmp_path, A, B)
    promote(storage, A, by="ann", rule=MANUAL)
    storage.write_bytes(f"{HISTORY_PREFIX}/000002.json", storage.read_bytes(production.PRODUCTION_PATH)
                        .replace(b'"seq": 1', b'"seq": 2').replace(A.encode(), B.encode()))
    assert [p.version for p in history(storage)] == [A] and production_version(storage) == A
    promote(storage, B, by="bob", rule=MANUAL)  # overwrites the orphan
    assert [(p.seq, p.version, p.by) for p in history(storage)] == [(1, A, "ann"), (2, B, "bob")]


def test_unknown_version_and_stale_expectations_are_refused(tmp_path):
    storage = _lake(tmp_path, A, B)
    with pytest.raises(ModelNotFound, match=f"No model version 'nope'.*Known: {A}, {B}"):
        promote(storage, "nope", by="ann", rule=MANUAL)
    promote(storage, A, by="ann", rule=MANUAL)
    with pytest.raises(PromotionConflict, match=f"now {A}, not None"):
        promote(storage, B, by="gate", rule="gate", expect=None)
    assert production_version(storage) == A


def test_resolve_version(tmp_path):
    storage = _lake(tmp_path)
    with pytest.raises(ModelNotFound, match="Train one first"):
        resolve_version(storage)
    storage.write_bytes(model_path(A, CARD), b"{}")
    assert resolve_version(storage, B) == B  # a named version is used as named
    assert resolve_version(storage) == A
    assert [(p.version, p.rule) for p in history(storage)] == [(A, FIRST_MODEL)]


def test_an_old_lake_promotes_its_newest_version_once(tmp_path, caplog):
    storage = _lake(tmp_path, A, C, B)
    with caplog.at_level(logging.WARNING, logger="tagger.model.production"):
        assert resolve_version(storage) == C
        assert resolve_version(storage) == C
    assert [(p.version, p.rule) for p in history(storage)] == [(C, EXISTING_LAKE)]
    assert "3 model versions and no production pointer: promoting the newest" in caplog.text


def test_production_gone_says_how_to_fix(tmp_path):
    storage = _lake(tmp_path, A)
    promote(storage, A, by="ann", rule=MANUAL)
    storage.delete(model_path(A, CARD))
    with pytest.raises(ModelNotFound, match="is gone.*tagger promote VERSION"):
        resolve_version(storage)


def test_two_promotions_at_once_are_serialised(tmp_path, monkeypatch):
    """Two threads promote at the same moment: the lake lock lets one write at a time, the
    other waits (not refused), and both are in the history, the pointer at the last."""
    storage = _lake(tmp_path, A, B)
    monkeypatch.setenv("TAGGER_LOCK_WAIT_S", "0")  # promotions wait anyway (PROMOTE_WAIT_S)
    spans, write = [], production._write

    def slow_write(*args):
        start = time.monotonic()
        time.sleep(0.5)  # long enough that an unserialised second writer would overlap
        entry = write(*args)
        spans.append((start, time.monotonic(), entry.version))
        return entry

    monkeypatch.setattr(production, "_write", slow_write)
    go = threading.Barrier(2)

    def run(version):
        go.wait()
        promote(open_storage(tmp_path / "lake"), version, by=version, rule=MANUAL)

    threads = [threading.Thread(target=run, args=(v,)) for v in (A, B)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (s1, e1, first), (s2, e2, second) = sorted(spans)
    assert e1 <= s2, "the two promotions overlapped"
    entries = history(storage)
    assert [(p.seq, p.version) for p in entries] == [(1, first), (2, second)]
    assert entries[1].previous == first and production_version(storage) == second


def test_cli_models_and_promote(trained_lake, capsys):
    from tagger.cli import main

    lake, version = trained_lake
    assert main(["models", "--lake", str(lake)]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["version"], row["status"], row["backbone"], row["split"]) == (
        version, "production", "test_efficientnet", "test")
    assert 0 <= row["mAP"] <= 1
    assert main(["promote", version, "--lake", str(lake), "--reason", "again"]) == 0
    assert json.loads(capsys.readouterr().out)["rule"] == FIRST_MODEL  # already production
    assert main(["promote", "nope", "--lake", str(lake)]) == 2


def test_promotions_on_s3_are_serialised_by_the_object_lock(s3_bucket):
    """The same on an object store: no append, no flock; one file per entry, a lock object."""
    storage = open_storage(f"{s3_bucket}/lake")
    for v in (A, B):
        storage.write_bytes(model_path(v, CARD), b"{}")
    go = threading.Barrier(2)

    def run(version):
        go.wait()
        promote(open_storage(f"{s3_bucket}/lake"), version, by=version, rule=MANUAL)

    threads = [threading.Thread(target=run, args=(v,)) for v in (A, B)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = history(storage)
    assert [p.seq for p in entries] == [1, 2] and {p.version for p in entries} == {A, B}
    assert entries[1].previous == entries[0].version and production_version(storage) == entries[1].version
