"""A real Label Studio for the review tests: label-studio 1.23.2 in its own virtual
environment (its Django stack pins versions our project does not want), created once under
tests/.cache/ and kept between runs; started on 127.0.0.1 with a temporary data directory
(SQLite), a user made from LABEL_STUDIO_USERNAME / _PASSWORD / _USER_TOKEN, and stopped by
PID (its process group), also when a test fails.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.prefect_server import stop
from tests.s3server import free_port

VERSION = "1.23.2"
VENV = Path(__file__).resolve().parents[1] / ".cache" / f"label-studio-{VERSION}"
READY = VENV / ".installed"  # written once pip finished: a broken install is redone
HEALTH_S = 180  # measured: /health answers within ~45 s of the start on 2 cores


def ensure_installed() -> Path:
    """The venv's label-studio executable, installing it first where it is not there."""
    exe = VENV / "bin" / "label-studio"
    if READY.exists() and exe.exists():
        return exe
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                          f"label-studio=={VERSION}"], capture_output=True, text=True)
    if pip.returncode:  # the review loop is tested against a real server or the test fails
        pytest.fail(f"label-studio {VERSION} could not be installed (pip exit {pip.returncode}: "
                    f"{pip.stderr.strip().splitlines()[-1] if pip.stderr.strip() else 'no output'})")
    READY.write_text(f"installed in {time.monotonic() - t0:.0f} s\n")
    return exe


@dataclass
class Studio:
    url: str
    email: str
    password: str
    legacy_token: str
    log: Path

    @contextmanager
    def session(self) -> Iterator[httpx.Client]:
        """A logged-in browser session (cookies + CSRF), what the settings pages need."""
        with httpx.Client(base_url=self.url, follow_redirects=True, timeout=30) as c:
            c.get("/user/login/")
            csrf = c.cookies.get("csrftoken")
            r = c.post("/user/login/", data={"email": self.email, "password": self.password,
                                              "csrfmiddlewaretoken": csrf},
                       headers={"Referer": f"{self.url}/user/login/"})
            r.raise_for_status()
            c.headers.update({"X-CSRFToken": c.cookies.get("csrftoken") or csrf,
                              "Referer": f"{self.url}/"})
            yield c

    def enable_legacy_tokens(self) -> None:
        with self.session() as c:
            r = c.post("/api/jwt/settings", json={"legacy_api_tokens_enabled": True})
            assert r.status_code < 300, r.text

    def personal_access_token(self) -> str:
        with self.session() as c:
            r = c.post("/api/token/")
            assert r.status_code < 300, r.text
            return r.json()["token"]


@contextmanager
def label_studio(data_dir: Path) -> Iterator[Studio]:
    exe = ensure_installed()
    port = free_port()
    studio = Studio(f"http://127.0.0.1:{port}", "reviewer@example.com", secrets.token_hex(8),
                    secrets.token_hex(20), data_dir / "label-studio.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update(LABEL_STUDIO_USERNAME=studio.email, LABEL_STUDIO_PASSWORD=studio.password,
               LABEL_STUDIO_USER_TOKEN=studio.legacy_token, LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
               COLLECT_ANALYTICS="false", HOME=str(data_dir))  # nothing under the real ~
    log = studio.log.open("w")
    proc = subprocess.Popen([str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data_dir / "data")], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True, cwd=data_dir)
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited ({proc.returncode}):\n{studio.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{studio.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > HEALTH_S:
                pytest.fail(f"label-studio not healthy after {HEALTH_S} s:\n{studio.log.read_text()[-3000:]}")
            time.sleep(1)
        print(f"label-studio {VERSION} healthy after {time.monotonic() - t0:.1f} s")
        yield studio
    finally:
        stop(proc)
        log.close()
