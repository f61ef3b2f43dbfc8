"""One writer per table group of a lake: `with lake_lock(storage, "catalog", owner=run_id):`.

Two nightly runs against the same lake must not interleave their writes (each write is
atomic, but a run reads a table, computes, and writes it back: the later run would drop
the earlier one's work). A run takes the lock of the tables it writes: ingest 'catalog',
tag 'tags', train 'models'. A second run waits up to `wait` seconds (TAGGER_LOCK_WAIT_S,
default 0) and then refuses with LakeBusy, naming who holds the lock since when.

A lake on this machine's file system: `fcntl.flock` on `.locks/<name>.lock`. The kernel
drops the lock when its process dies (even by SIGKILL), so a crashed run never blocks the
next one. The file names its holder (host, pid, owner, since) for the message.

A lake without a local path (S3): the object `.locks/<name>.json` with the holder and an
expiry, created with `Storage.create_if_absent` (If-None-Match: * on S3: AWS S3, MinIO,
R2... refuse a second create with 412) and read back to check that it is ours (stores
that ignore the condition, such as rclone's, then still catch all but near-simultaneous
starts). A holder renews the expiry every ttl/3 from a thread; a lock whose expiry has
passed (its run died elsewhere) or whose process is gone from this host is taken over
with `Storage.replace_if` on the version it read. Hidden names ('.') keep lock files out
of every table listing. Which of the two a lake gets is the storage's to say
(`Storage.local_path`); this module never asks which backend it has.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from tagger.config import load_settings
from tagger.io.local import acting
from tagger.io.storage import Storage, open_storage

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCKS = ".locks"
DEFAULT_TTL_S = 120.0  # object locks only: a dead holder on another host blocks for at most this long
_HELD: set[str] = set()  # tokens of the object locks this process holds now
POLL_S = 0.25


class LakeBusy(RuntimeError):
    """Another run holds the lock; the message says who, since when, and what to do."""


def _holder(owner: str, ttl: float) -> dict:
    now = time.time()
    return dict(owner=owner, host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
                since=datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
                expires=now + ttl)


def _describe(h: dict | None) -> str:
    if not h:
        return "another run"
    return f"run {h.get('owner')!r} (host {h.get('host')}, pid {h.get('pid')}, since {h.get('since')})"


def _wait_s(wait: float | None) -> float:
    return load_settings().lock_wait_s if wait is None else wait


@contextmanager
def lake_lock(storage: Storage, name: str, *, owner: str, wait: float | None = None,
              ttl: float = DEFAULT_TTL_S) -> Iterator[None]:
    """Hold the lake's lock `name` for the block; wait up to `wait` s, then raise LakeBusy."""
    wait = _wait_s(wait)
    local = storage.local_path(f"{LOCKS}/{name}.lock")
    if local is not None:
        with _local_lock(storage, local, name, owner, wait):
            yield
    else:
        with _object_lock(storage, name, owner, wait, ttl):
            yield


def locked(name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: hold the lake's lock `name` while `fn(lake, ...)` runs (owner: its run_id)."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(lake: str, *args, **kwargs) -> T:
            owner = kwargs.get("run_id") or f"{fn.__name__} (pid {os.getpid()})"
            with lake_lock(open_storage(lake), name, owner=owner):
                return fn(lake, *args, **kwargs)

        return wrapper

    return decorate


def _busy(storage: Storage, name: str, holder: dict | None, wait: float, how_to_clear: str) -> LakeBusy:
    return LakeBusy(
        f"Lake {storage.uri} is busy: {_describe(holder)} holds its {name!r} lock "
        f"(waited {wait:g}s). Two runs must not write the same tables at once: wait for that "
        f"run to finish, or set TAGGER_LOCK_WAIT_S to wait longer. {how_to_clear}"
    )


# --- a file on this machine: flock ----------------------------------------------------


@contextmanager
def _local_lock(storage: Storage, path: Path, name: str, owner: str, wait: float) -> Iterator[None]:
    with acting("take the lake lock", str(path)):
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
        with acting("take the lake lock", str(path)):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_json(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise _busy(storage, name, holder, wait,
                            "The lock is released by the kernel when its process exits.") from None
            time.sleep(POLL_S)
            continue
        # The holder before us may have unlinked the file after we opened it: then our
        # lock is on a dead inode and a third run could lock a new file. Start over.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder(owner, 0)).encode())
        log.debug("took lock %s of %s for %s", name, storage.uri, owner)
        yield
    finally:
        os.unlink(path)  # while still holding it (see the inode check above)
        os.close(fd)


def _read_json(fd: int) -> dict | None:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None


# --- an object store: a lock object with an expiry -------------------------------------


def _read_lock(storage: Storage, path: str) -> tuple[dict | None, str | None]:
    """(holder, version) of the lock object; (None, None) if there is none."""
    found = storage.read_with_version(path)
    if found is None:
        return None, None
    body, version = found
    try:
        return json.loads(body), version
    except ValueError:
        return {}, version  # unreadable: treated as expired


def _dead_here(holder: dict) -> bool:
    """The holder ran on this host and its process is gone (or is us, and let it go
    without releasing it, e.g. when S3 was down at the end of a failed run)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    if holder["pid"] == os.getpid():
        return holder.get("token") not in _HELD
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _try_take(storage: Storage, path: str, holder: dict) -> tuple[bool, dict | None]:
    """One attempt: write our holder if the lock is free or stale, then read it back.
    Returns (taken, the holder seen)."""
    current, version = _read_lock(storage, path)
    data = json.dumps(holder).encode()
    if current is None:
        written = storage.create_if_absent(path, data)
    elif current.get("expires", 0) < time.time() or _dead_here(current):
        log.warning("lock %s is stale (held by %s, expired or its process is gone): taking it "
                    "over", storage.url(path), _describe(current))
        written = storage.replace_if(path, data, version)
    else:
        return False, current
    if not written:
        return False, current
    time.sleep(POLL_S)  # let a racing writer on a store without conditions land
    mine, _ = _read_lock(storage, path)
    return bool(mine and mine.get("token") == holder["token"]), mine


@contextmanager
def _object_lock(storage: Storage, name: str, owner: str, wait: float, ttl: float) -> Iterator[None]:
    path = f"{LOCKS}/{name}.json"
    uri = storage.url(path)
    holder = _holder(owner, ttl)
    deadline = time.monotonic() + wait
    while True:
        taken, current = _try_take(storage, path, holder)
        if taken:
            break
        if time.monotonic() >= deadline:
            raise _busy(storage, name, current, wait,
                        f"If that run is dead, its lock expires at "
                        f"{datetime.fromtimestamp((current or {}).get('expires', 0), timezone.utc):%H:%M:%S} UTC "
                        f"(or delete {uri}).")
        time.sleep(POLL_S)

    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(storage, path, holder, ttl, stop),
                               name=f"lock-{name}", daemon=True)
    renewer.start()
    _HELD.add(holder["token"])
    log.debug("took lock %s for %s", uri, owner)
    try:
        yield
    finally:
        _HELD.discard(holder["token"])
        stop.set()
        renewer.join()
        _release(storage, path, holder)


def _renew(storage: Storage, path: str, holder: dict, ttl: float, stop: threading.Event) -> None:
    """Keep the expiry ahead of the clock while the run is alive (a thread's loop). Each
    renewal replaces the lock only if it is still ours: a run whose renewals failed for a
    whole ttl (S3 unreachable) must not overwrite the run that took the lock over since."""
    while not stop.wait(ttl / 3):
        holder["expires"] = time.time() + ttl
        try:
            current, version = _read_lock(storage, path)
            if not current or current.get("token") != holder["token"]:
                log.warning("lock %s is no longer ours (now %s); not renewing it", storage.url(path),
                            _describe(current))
                return
            storage.replace_if(path, json.dumps(holder).encode(), version)
        except Exception as e:  # the next renewal tries again; expiry has slack
            log.warning("could not renew lock %s: %s", storage.url(path), e)


def _release(storage: Storage, path: str, holder: dict) -> None:
    try:
        current, _ = _read_lock(storage, path)
        if current and current.get("token") == holder["token"]:
            storage.delete(path)
    except Exception as e:  # S3 down: do not hide the run's own error; the lock expires
        log.warning("could not release lock %s (%s); it expires at %s UTC", storage.url(path), e,
                    datetime.fromtimestamp(holder["expires"], timezone.utc).strftime("%H:%M:%S"))
