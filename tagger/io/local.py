"""A lake in a local folder (or a mounted network file system).

A file is written under a hidden temporary name in the same folder and renamed (or linked)
into place, so a reader sees the old file or the new one.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from tagger.io.base import FileInfo, Storage, StorageError, read_bounded, stat_version, storage_error

log = logging.getLogger(__name__)


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        root = str(root)
        if root.startswith("file://"):
            root = root[len("file://"):]
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, path: str) -> Path:
        full = (self.root / path).resolve()
        if full != self.root and self.root not in full.parents:
            raise StorageError(f"Path {path!r} escapes the root {self.uri}")
        return full

    def local_path(self, path: str) -> Path:
        return self._path(path)

    def read_bytes(self, path: str, max_bytes: int | None = None) -> bytes:
        try:
            with acting("read", self.url(path)), open(self._path(path), "rb") as f:
                return read_bounded(f, self.url(path), max_bytes)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url(path)} does not exist") from None

    def read_with_version(self, path: str) -> tuple[bytes, str] | None:
        try:
            with acting("read", self.url(path)), open(self._path(path), "rb") as f:
                return f.read(), stat_version(os.fstat(f.fileno()))
        except FileNotFoundError:
            return None

    @contextmanager
    def _staged(self, write: Callable[[Path], object], path: str) -> Iterator[tuple[Path, Path]]:
        """(temporary file holding the new content, target) for a commit step; the
        temporary file is always removed afterwards."""
        target = self._path(path)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        with acting("write", self.url(path)):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                write(tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                yield tmp, target
            finally:
                tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temporary file

    def _commit(self, write: Callable[[Path], object], path: str) -> None:
        with self._staged(write, path) as (tmp, target):
            os.replace(tmp, target)

    def write_bytes(self, path: str, data: bytes) -> None:
        self._commit(lambda tmp: tmp.write_bytes(data), path)

    def upload(self, local_file: Path, path: str) -> None:
        self._commit(lambda tmp: shutil.copyfile(local_file, tmp), path)

    def create_if_absent(self, path: str, data: bytes) -> bool:
        # link() of the finished temporary file fails if the name exists, and a reader
        # never sees a part: O_EXCL and then writing would show an empty or half file.
        with self._staged(lambda tmp: tmp.write_bytes(data), path) as (tmp, target):
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            except OSError as e:  # a file system without hard links (FAT, some FUSE mounts)
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                return self._create_exclusive(target, data)
        return True

    @staticmethod
    def _create_exclusive(target: Path, data: bytes) -> bool:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def replace_if(self, path: str, data: bytes, version: str) -> bool:
        # Comparing and renaming are two steps. A short flock on the file being replaced
        # makes them one for every other replace_if: a second caller that waited on the same
        # file then finds the name pointing at the new file, whose version differs. Readers
        # never wait (rename is atomic) and the kernel drops the flock if the process dies.
        # The version is size and mtime: two writes of equal size within one clock tick of
        # the file system look the same, as they do to `version`.
        with self._staged(lambda tmp: tmp.write_bytes(data), path) as (tmp, target):
            try:
                fd = os.open(target, os.O_RDONLY)
            except FileNotFoundError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if stat_version(os.fstat(fd)) != version or not _same_file(fd, target):
                    return False
                os.replace(tmp, target)
            finally:
                os.close(fd)
        return True

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith("."):
                    out.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(out)

    def delete(self, path: str) -> None:
        with acting("delete", self.url(path)):
            self._path(path).unlink(missing_ok=True)

    def info(self, path: str) -> FileInfo | None:
        try:
            st = self._path(path).stat()
        except FileNotFoundError:
            return None
        return FileInfo(st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc))

    def version(self, path: str) -> str | None:
        try:
            return stat_version(self._path(path).stat())
        except FileNotFoundError:
            return None

    @contextmanager
    def local_copy(self, path: str) -> Iterator[Path]:
        yield self._path(path)


@contextmanager
def acting(what: str, url: str) -> Iterator[None]:
    """An OSError a person can act on (disk full, permission, read-only, I/O error) as one
    StorageError naming `url` and what to do; every other error as it was."""
    try:
        yield
    except OSError as e:
        error = storage_error(e, what, url)
        if error is None:
            raise
        raise error from e


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (not replaced since it was opened)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
