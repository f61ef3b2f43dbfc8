"""One writer per table group of a lake: `with lake_lock(storage, "catalog", owner=run_id):`.

Two nightly runs against the same lake must not interleave their writes (each write is
atomic, but a run reads a table, computes, and writes it back: the later run would drop
the earlier one's work). A run takes the lock of the tables it writes: ingest 'catalog',
tag 'tags', train 'models'. A second run waits up to `wait` seconds (TAGGER_LOCK_WAIT_S,
default 0) and then refuses with LakeBusy, naming who holds the lock since when.

Local folder: `fcntl.flock` on `.locks/<name>.lock`. The kernel drops the lock when its
process dies (even by SIGKILL), so a crashed run never blocks the next one. The file names
its holder (host, pid, owner, since) for the message.

S3: the object `.locks/<name>.json` with the holder and an expiry, created with
`If-None-Match: *` (AWS S3, MinIO, R2... refuse a second create with 412) and read back
to check that it is ours (stores that ignore the condition, such as rclone's, then still
catch all but near-simultaneous starts). A holder renews the expiry every ttl/3 from a
thread; a lock whose expiry has passed (its run died elsewhere) or whose process is gone
from this host is taken over. Hidden names ('.')
keep lock files out of every table listing.
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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from tagger.io.storage import LocalStorage, S3Storage, Storage, open_storage

log = logging.getLogger(__name__)

LOCKS = ".locks"
DEFAULT_TTL_S = 120.0  # S3 only: a dead holder on another host blocks for at most this long
_HELD: set[str] = set()  # tokens of the S3 locks this process holds now
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
    return float(os.environ.get("TAGGER_LOCK_WAIT_S", 0)) if wait is None else wait


@contextmanager
def lake_lock(storage: Storage, name: str, *, owner: str, wait: float | None = None,
              ttl: float = DEFAULT_TTL_S) -> Iterator[None]:
    """Hold the lake's lock `name` for the block; wait up to `wait` s, then raise LakeBusy."""
    wait = _wait_s(wait)
    if isinstance(storage, S3Storage):
        with _s3_lock(storage, name, owner, wait, ttl):
            yield
    elif isinstance(storage, LocalStorage):
        with _local_lock(storage, name, owner, wait):
            yield
    else:  # pragma: no cover - a new backend must add its lock here
        raise TypeError(f"no lock for storage {type(storage).__name__}")


def locked(name: str):
    """Decorator: hold the lake's lock `name` while `fn(lake, ...)` runs (owner: its run_id)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(lake, *args, **kwargs):
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


# --- local folder ------------------------------------------------------------------------


@contextmanager
def _local_lock(storage: LocalStorage, name: str, owner: str, wait: float) -> Iterator[None]:
    path = storage.root / LOCKS / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
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


# --- S3 ----------------------------------------------------------------------------------


def _s3_read(storage: S3Storage, path: str) -> tuple[dict | None, str | None]:
    key = storage._key(path)
    with storage.translate_errors("lock read", path):
        try:
            obj = storage.client.get_object(Bucket=storage.bucket, Key=key)
        except storage.client.exceptions.NoSuchKey:
            return None, None
        body = obj["Body"].read()
    try:
        return json.loads(body), obj["ETag"]
    except ValueError:
        return {}, obj["ETag"]  # unreadable: treated as expired


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


def _s3_put(storage: S3Storage, path: str, holder: dict, condition: dict) -> bool:
    """PUT the lock object under a condition; False when the store says it is taken."""
    from botocore.exceptions import ClientError

    key = storage._key(path)
    with storage.translate_errors("lock write", path):
        try:
            storage.client.put_object(Bucket=storage.bucket, Key=key, Body=json.dumps(holder).encode(),
                                      ContentType="application/json", **condition)
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in {"PreconditionFailed", "ConditionalRequestConflict",
                                                             "412", "409"}:
                return False
            raise


@contextmanager
def _s3_lock(storage: S3Storage, name: str, owner: str, wait: float, ttl: float) -> Iterator[None]:
    path = f"{LOCKS}/{name}.json"
    key, uri = storage._key(path), storage.url(path)
    holder = _holder(owner, ttl)
    deadline = time.monotonic() + wait
    while True:
        current, etag = _s3_read(storage, path)
        if current is None:
            condition = {"IfNoneMatch": "*"}
        elif current.get("expires", 0) < time.time() or _dead_here(current):
            log.warning("lock %s is stale (held by %s, expired or its process is gone): taking it "
                        "over", uri, _describe(current))
            condition = {"IfMatch": etag}
        else:
            condition = None
        if condition is not None and _s3_put(storage, path, holder, condition):
            time.sleep(POLL_S)  # let a racing writer on a store without conditions land
            mine, _ = _s3_read(storage, path)
            if mine and mine.get("token") == holder["token"]:
                break
            current = mine
        if time.monotonic() >= deadline:
            raise _busy(storage, name, current, wait,
                        f"If that run is dead, its lock expires at "
                        f"{datetime.fromtimestamp((current or {}).get('expires', 0), timezone.utc):%H:%M:%S} UTC "
                        f"(or delete {uri}).")
        time.sleep(POLL_S)

    stop = threading.Event()

    def renew():  # keep the expiry ahead of the clock while the run is alive
        while not stop.wait(ttl / 3):
            holder["expires"] = time.time() + ttl
            try:
                storage.client.put_object(Bucket=storage.bucket, Key=key, Body=json.dumps(holder).encode())
            except Exception as e:  # the next renewal tries again; expiry has slack
                log.warning("could not renew lock %s: %s", uri, e)

    renewer = threading.Thread(target=renew, name=f"lock-{name}", daemon=True)
    renewer.start()
    _HELD.add(holder["token"])
    log.debug("took lock %s for %s", uri, owner)
    try:
        yield
    finally:
        _HELD.discard(holder["token"])
        stop.set()
        renewer.join()
        try:
            current, _ = _s3_read(storage, path)
            if current and current.get("token") == holder["token"]:
                storage.client.delete_object(Bucket=storage.bucket, Key=key)
        except Exception as e:  # S3 down: do not hide the run's own error; the lock expires
            log.warning("could not release lock %s (%s); it expires at %s UTC", uri, e,
                        datetime.fromtimestamp(holder["expires"], timezone.utc).strftime("%H:%M:%S"))
