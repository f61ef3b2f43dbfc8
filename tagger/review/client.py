"""A small Label Studio REST client (httpx): projects, task import and export, annotations.

Plain REST rather than label-studio-sdk: the handful of calls the review loop makes are
stable across Label Studio 1.x, httpx is already installed with Prefect, and the SDK pins
its own pydantic and httpx ranges that this project would then have to follow.

Where and who come from the environment only, never a config file: LABEL_STUDIO_URL and
LABEL_STUDIO_API_KEY. The key is either a personal access token (a JWT refresh token, what
Account & Settings hands out today: exchanged at /api/token/refresh/ for a short-lived access
token, again whenever that expires) or a legacy token (sent as `Token <key>`; Label Studio
refuses those unless the organisation enabled legacy tokens).

Every failure is one line: ReviewUnreachable (a RuntimeError: another try may help) when
the server cannot be reached, ReviewRefused (a ValueError: fix the token or the request)
when it answers with an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import httpx

log = logging.getLogger(__name__)

URL_ENV, KEY_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"
TIMEOUT_S = 60.0  # an export of a big project takes a while; a dead server fails at connect


class ReviewUnreachable(RuntimeError):
    """The review tool could not be reached (network, server down): retry later."""


class ReviewRefused(ValueError):
    """The review tool answered with an error (a wrong token, a bad request)."""


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _is_jwt(key: str) -> bool:
    return key.count(".") == 2 and key.startswith("ey")


@dataclass
class LabelStudio:
    url: str
    key: str
    timeout_s: float = TIMEOUT_S
    _access: str | None = field(default=None, repr=False)
    _users: dict[int, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls) -> LabelStudio:
        url, key = os.environ.get(URL_ENV, "").strip(), os.environ.get(KEY_ENV, "").strip()
        missing = [n for n, v in ((URL_ENV, url), (KEY_ENV, key)) if not v]
        if missing:
            raise ReviewRefused(
                f"Set {' and '.join(missing)} in the environment: the Label Studio URL (e.g. "
                f"http://127.0.0.1:8080) and an API token (Account & Settings -> Personal Access "
                "Token); they are never read from a config file.")
        return cls(url.rstrip("/"), key)

    # -- HTTP -------------------------------------------------------------------------

    def _auth(self, refresh: bool = False) -> str:
        if not _is_jwt(self.key):
            return f"Token {self.key}"
        if self._access is None or refresh:
            r = self._send("POST", "/api/token/refresh/", json={"refresh": self.key}, auth=None)
            self._access = r.json()["access"]
        return f"Bearer {self._access}"

    def _send(self, method: str, path: str, *, auth: str | None, **kw) -> httpx.Response:
        headers = {"Authorization": auth} if auth else {}
        try:
            r = httpx.request(method, self.url + path, headers=headers, timeout=self.timeout_s, **kw)
        except httpx.HTTPError as e:
            raise ReviewUnreachable(
                f"Label Studio at {self.url} cannot be reached ({type(e).__name__}: "
                f"{_one_line(e, 120)}): is it running, and is {URL_ENV} right?") from None
        if r.status_code in (401, 403):
            detail = _one_line(_detail(r), 160)
            fix = ("enable legacy tokens (Organization -> Access Token Settings) or use a personal "
                   "access token" if "legacy" in detail else
                   "use a personal access token from Account & Settings")
            raise ReviewRefused(f"Label Studio at {self.url} refused the token in {KEY_ENV} "
                                f"(HTTP {r.status_code}: {detail}): {fix}.")
        if r.status_code >= 400:
            raise ReviewRefused(f"Label Studio {method} {path} answered HTTP {r.status_code}: "
                                f"{_one_line(_detail(r))}")
        return r

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        """One authenticated call; a personal access token's expired access token is
        refreshed once and the call repeated."""
        try:
            return self._send(method, path, auth=self._auth(), **kw)
        except ReviewRefused as e:
            if not (_is_jwt(self.key) and "HTTP 401" in str(e)):
                raise
            return self._send(method, path, auth=self._auth(refresh=True), **kw)

    # -- the calls the review loop makes ----------------------------------------------

    def projects(self) -> list[dict]:
        found, page = [], 1
        while True:
            body = self.request("GET", "/api/projects", params={"page": page, "page_size": 100}).json()
            items = body["results"] if isinstance(body, dict) else body
            found += items
            if not isinstance(body, dict) or not body.get("next"):
                return found
            page += 1

    def create_project(self, title: str, label_config: str, description: str = "") -> dict:
        return self.request("POST", "/api/projects", json=dict(
            title=title, label_config=label_config, description=description)).json()

    def update_project(self, project_id: int, **fields) -> dict:
        return self.request("PATCH", f"/api/projects/{project_id}", json=fields).json()

    def export_tasks(self, project_id: int) -> list[dict]:
        """Every task of the project with its data, annotations and predictions."""
        return self.request("GET", f"/api/projects/{project_id}/export",
                            params={"exportType": "JSON", "download_all_tasks": "true"}).json()

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        """Create tasks (data + predictions); the number Label Studio created."""
        if not tasks:
            return 0
        body = self.request("POST", f"/api/projects/{project_id}/import", json=tasks).json()
        return int(body.get("task_count", len(tasks)))

    def create_annotation(self, task_id: int, result: list[dict]) -> dict:
        """What a reviewer's Submit does (the tests annotate through it)."""
        return self.request("POST", f"/api/tasks/{task_id}/annotations", json={"result": result}).json()

    def user_name(self, completed_by) -> str:
        """A reviewer's e-mail from an export's `completed_by` (an id, or the user itself)."""
        if isinstance(completed_by, dict):
            return completed_by.get("email") or f"user {completed_by.get('id')}"
        if completed_by is None:
            return "unknown"
        uid = int(completed_by)
        if uid not in self._users:
            try:
                self._users[uid] = self.request("GET", f"/api/users/{uid}").json().get("email") or f"user {uid}"
            except ReviewRefused:  # a reviewer may not see other users: keep the id
                self._users[uid] = f"user {uid}"
        return self._users[uid]

    def project_url(self, project_id: int) -> str:
        return f"{self.url}/projects/{project_id}"


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("validation_errors") or body)
    return str(body)
