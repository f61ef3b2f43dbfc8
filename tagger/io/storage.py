"""One way to read and write bytes and Parquet under a root URI: a local folder or s3://bucket/prefix.

Only this module knows which of the two a root is. Every write is atomic: a reader sees
the old file or the new one, never a part. Locally a file is written under a hidden
temporary name in the same folder and renamed into place; on S3 an object only appears
when its PUT (or multipart upload) completes. Hidden names start with '.', which
DuckDB globs, pyarrow datasets and Spark all skip.

S3 endpoint, region, credentials and addressing style come from the standard AWS
configuration (environment variables such as AWS_ENDPOINT_URL, AWS_PROFILE, ~/.aws),
so S3-compatible stores (MinIO, Ceph, R2) work without code changes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

PARQUET_OPTIONS = dict(compression="zstd", write_statistics=True)
# Rows per row group of the tables write_table writes: a reader that streams a table (a tag
# run reads products and state in batches) decodes one row group at a time, so this bounds
# its memory whatever the catalog size; BI engines read such groups in parallel.
ROW_GROUP_ROWS = 16_384


class StorageError(RuntimeError):
    """A read or write that failed; the message names the URI."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    rest = str(uri)[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/prefix")
    return bucket, key.strip("/")


_CLIENTS: dict[bytes, object] = {}
_CLIENTS_LOCK = threading.Lock()
# The settings a client is built from: a new value (another endpoint, profile, key) gets a
# new client, the same values share one (boto3 clients are thread-safe, and building one
# costs ~0.1-0.5 s of CPU).
_CLIENT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
               "TAGGER_S3_MAX_ATTEMPTS")


def create_s3_client():
    """A boto3 S3 client configured from the standard AWS settings, with adaptive retries
    (throttling, 5xx and dropped connections are retried with backoff; attempts from
    TAGGER_S3_MAX_ATTEMPTS, default 8). Shared per process and settings."""
    import boto3
    from botocore.config import Config

    # A digest, so that no secret sits in a long-lived structure.
    key = hashlib.sha256(repr((os.getpid(), *(os.environ.get(k) for k in _CLIENT_ENV))).encode()).digest()
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            config = Config(
                retries={"mode": "adaptive",
                         "max_attempts": int(os.environ.get("TAGGER_S3_MAX_ATTEMPTS", 8))},
                max_pool_connections=64,
                connect_timeout=10,
                read_timeout=60,
            )
            _CLIENTS[key] = boto3.session.Session().client("s3", config=config)
        return _CLIENTS[key]


class Storage:
    """Files under a root URI. Paths are '/'-separated and relative to the root."""

    uri: str

    def url(self, path: str = "") -> str:
        return f"{self.uri.rstrip('/')}/{path}" if path else self.uri

    # The backends implement these.
    def read_bytes(self, path: str) -> bytes: ...
    def write_bytes(self, path: str, data: bytes) -> None: ...
    def upload(self, local_file: Path, path: str) -> None: ...
    def exists(self, path: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, path: str) -> None: ...
    def version(self, path: str) -> str | None: ...

    @contextmanager
    def local_copy(self, path: str) -> Iterator[Path]:
        """A local file with the content of `path` for libraries that need a file name."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        paths = self.list(prefix)
        for p in paths:
            self.delete(p)
        return len(paths)


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

    def read_bytes(self, path: str) -> bytes:
        try:
            return self._path(path).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url(path)} does not exist") from None

    def _commit(self, write, path: str) -> None:
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def write_bytes(self, path: str, data: bytes) -> None:
        self._commit(lambda tmp: tmp.write_bytes(data), path)

    def upload(self, local_file: Path, path: str) -> None:
        self._commit(lambda tmp: shutil.copyfile(local_file, tmp), path)

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
        self._path(path).unlink(missing_ok=True)

    def version(self, path: str) -> str | None:
        try:
            st = self._path(path).stat()
        except FileNotFoundError:
            return None
        return f"{st.st_size}-{st.st_mtime_ns}"

    @contextmanager
    def local_copy(self, path: str) -> Iterator[Path]:
        yield self._path(path)


class S3Storage(Storage):
    def __init__(self, uri: str, client=None):
        self.bucket, self.prefix = split_s3(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._client = client

    @cached_property
    def client(self):
        return self._client or create_s3_client()

    def _key(self, path: str) -> str:
        if ".." in path.split("/"):
            raise StorageError(f"Path {path!r} escapes the root {self.uri}")
        return f"{self.prefix}/{path}".lstrip("/") if self.prefix else path

    @contextmanager
    def translate_errors(self, what: str, path: str) -> Iterator[None]:
        """botocore's errors, once its retries are spent, as one StorageError naming the URI
        (never the credentials) and what to do."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            raise StorageError(
                f"S3 {what} of {self.url(path)} failed: {err.get('Code')} {err.get('Message', '')}".rstrip()
                + ". Check the bucket, the permissions and AWS_ENDPOINT_URL; a re-run continues "
                "where this one stopped."
            ) from e
        except BotoCoreError as e:
            raise StorageError(
                f"S3 {what} of {self.url(path)} failed after retries ({type(e).__name__}: {e}). The "
                "endpoint is unreachable or overloaded; a re-run continues where this one stopped "
                "(more attempts: TAGGER_S3_MAX_ATTEMPTS)."
            ) from e

    def read_bytes(self, path: str) -> bytes:
        with self.translate_errors("read", path):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()
            except self.client.exceptions.NoSuchKey:
                raise FileNotFoundError(f"{self.url(path)} does not exist") from None

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.translate_errors("write", path):
            self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data)

    def upload(self, local_file: Path, path: str) -> None:
        from boto3.exceptions import S3UploadFailedError

        try:
            with self.translate_errors("upload", path):
                self.client.upload_file(str(local_file), self.bucket, self._key(path))
        except S3UploadFailedError as e:  # s3transfer's wrapper around the same errors
            raise StorageError(f"S3 upload of {self.url(path)} failed: {e}. A re-run continues "
                               "where this one stopped.") from e

    def exists(self, path: str) -> bool:
        return self.version(path) is not None

    def list(self, prefix: str = "") -> list[str]:
        key_prefix = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = []
        with self.translate_errors("listing", prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=key_prefix
            ):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][strip:]
                    if not any(part.startswith(".") for part in rel.split("/")):
                        out.append(rel)
        return sorted(out)

    def delete(self, path: str) -> None:
        with self.translate_errors("delete", path):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(path))

    def version(self, path: str) -> str | None:
        from botocore.exceptions import ClientError

        with self.translate_errors("HEAD", path):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(path))
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                    return None
                raise
        return head["ETag"].strip('"')

    @contextmanager
    def local_copy(self, path: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
            local = Path(tmp) / Path(path).name
            with self.translate_errors("download", path):
                self.client.download_file(self.bucket, self._key(path), str(local))
            yield local


def open_storage(uri: str | Path) -> Storage:
    """The storage for a root URI: `s3://bucket/prefix` or a local folder."""
    return S3Storage(str(uri)) if is_s3(str(uri)) else LocalStorage(uri)


def open_file(uri: str | Path) -> tuple[Storage, str]:
    """(storage of the parent, name) for a single file URI, local or S3."""
    uri = str(uri)
    if is_s3(uri):
        parent, _, name = uri.rpartition("/")
        return S3Storage(parent), name
    path = Path(uri).expanduser().resolve()
    return LocalStorage(path.parent), path.name


# --- Parquet -----------------------------------------------------------------------------


def write_table(storage: Storage, path: str, table: pa.Table) -> None:
    """Write one Parquet file atomically and log its row count and URI."""
    with tempfile.TemporaryDirectory(prefix="tagger-") as tmp:
        local = Path(tmp) / "part.parquet"
        pq.write_table(table, local, row_group_size=ROW_GROUP_ROWS, **PARQUET_OPTIONS)
        storage.upload(local, path)
    log.info("wrote %d rows to %s", table.num_rows, storage.url(path))


def read_table(storage: Storage, path: str, schema: pa.Schema | None = None,
               defaults: dict | None = None) -> pa.Table:
    """Read one Parquet file; cast to `schema` when given (column order and types).
    `defaults`: values for columns that files written by older versions lack."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
    for name, value in (defaults or {}).items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows,
                                                       type=schema.field(name).type))
    return table.select(schema.names).cast(schema) if schema is not None else table


def read_tables(storage: Storage, prefix: str, schema: pa.Schema) -> pa.Table:
    """Concatenate every Parquet file under `prefix` (empty table with `schema` if none)."""
    parts = [read_table(storage, p, schema) for p in storage.list(prefix) if p.endswith(".parquet")]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def read_table_or_empty(storage: Storage, path: str, schema: pa.Schema,
                        defaults: dict | None = None) -> pa.Table:
    return read_table(storage, path, schema, defaults) if storage.exists(path) else schema.empty_table()
