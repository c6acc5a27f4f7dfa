"""A Label Studio server over its REST API: the only module that talks to one; plain dicts in and out.

Why plain HTTP (`httpx`) and not label-studio-sdk: every SDK 2.x release pins opencv-python-headless 4.12,
which needs numpy<2.3, so installing the SDK would downgrade numpy under torch, pyarrow and the rest of the
stack. The dozen endpoints a push and a pull need are small enough to call directly.

Two kinds of API key work: a legacy token (`Authorization: Token <key>`), and a personal access token (a
JWT refresh token, exchanged at `/api/token/refresh/` for a short-lived access token sent as `Bearer`,
exchanged again when it expires or the server answers 401). The key lives only in the client's memory: it
is never in a repr, a log line or an error message, and errors name the URL, not the key.

Verified against Label Studio 1.23.2 Community: listings paginate and answer 404 "Invalid page" past the
end; the project title filter matches substrings; imports run synchronously (Enterprise answers
`{"import": id}` and runs them in the background, which `import_tasks` waits for); export snapshots are
byte-identical for an unchanged project.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:
    import httpx
except ImportError as exc:  # a base install without the extra
    raise ImportError("talking to Label Studio needs httpx: pip install 'rlhf[labelstudio]'") from exc

from rlhf.errors import ConfigError, RlhfError

URL_ENV, KEY_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"
PAGE_SIZE = 1000
DOWNLOAD_CHUNK = 1 << 20  # bytes a snapshot download holds at a time
REFRESH_MARGIN_S = 30  # exchange the access token this long before it expires
TITLE_LENGTH = (3, 50)  # Label Studio refuses project titles outside this range


class AnnotationServerError(RlhfError):
    """The annotation server is unreachable, refused the key, or answered a request with an error."""


@dataclass(frozen=True)
class Credentials:
    """Where the server is and the key to it; the key is left out of the repr so that no log shows it."""

    url: str
    api_key: str = field(repr=False)

    @classmethod
    def resolve(
        cls, url: str | None, api_key: str | None, environ: Mapping[str, str] = os.environ
    ) -> Credentials:
        """The flags where given, else `LABEL_STUDIO_URL` and `LABEL_STUDIO_API_KEY`; missing is one line."""
        url = url or environ.get(URL_ENV)
        api_key = api_key or environ.get(KEY_ENV)
        if not url:
            raise ConfigError(f"Label Studio URL: pass --url or set {URL_ENV}")
        if not api_key:
            raise ConfigError(f"Label Studio API key: set {KEY_ENV} (or pass --api-key)")
        where = f"Label Studio URL (--url / {URL_ENV})"
        parts = urlsplit(url)
        if "@" in parts.netloc:
            # httpx would send them as basic auth in place of the key, and a password in a URL ends up in logs
            raise ConfigError(f"{where}: put no user or password in it; the API key authenticates")
        try:
            parts.port  # noqa: B018 (a bad port raises here)
        except ValueError:
            parts = parts._replace(netloc="")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}: expected http(s)://HOST[:PORT], got {url!r}")
        return cls(url.rstrip("/"), api_key.strip())

    @property
    def public_url(self) -> str:
        """The URL as messages and manifests record it: without any user information."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Snapshot:
    """An export snapshot as downloaded: its id on the server, the server's md5, the file it was streamed
    to (a project's export can be larger than memory) and that file's sha256."""

    id: int
    md5: str
    path: Path
    sha256: str


class LabelStudio:
    """A client of one Label Studio server; use it as a context manager so the connections close."""

    def __init__(self, credentials: Credentials, timeout: float = 60.0) -> None:
        self.url = credentials.public_url
        self._key = credentials.api_key
        self._claims = _jwt_claims(self._key)
        self._access: str | None = None
        self._access_expires = 0.0
        self._http = httpx.Client(
            base_url=credentials.url + "/",
            timeout=timeout,
            headers={"Accept": "application/json"},
        )

    def __repr__(self) -> str:
        return f"LabelStudio({self.url!r})"

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- projects -------------------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        """The server's version (`release`, `edition`); also checks the key, which `/api/version` does not."""
        version = self._json("GET", "api/version")
        self._json("GET", "api/current-user/whoami")
        return version

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project titled exactly `title` (the server's filter matches substrings), or None."""
        for project in self._pages("api/projects/", {"title": title}):
            if project.get("title") == title:
                return project
        return None

    def create_project(self, title: str, label_config: str, overlap: int) -> dict[str, Any]:
        """A new project; `overlap` (annotators per task) is set now, as tasks take it when imported."""
        body = {"title": title, "label_config": label_config, "maximum_annotations": overlap}
        return self._json("POST", "api/projects/", json=body)

    def project(self, project_id: int) -> dict[str, Any]:
        """One project, with its `label_config`."""
        return self._json("GET", f"api/projects/{project_id}")

    # -- tasks ----------------------------------------------------------------------------------------

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project without its annotations: id, data, meta and the annotation counts."""
        wanted = ("id", "data", "meta", "total_annotations", "cancelled_annotations", "is_labeled")
        params = {"project": project_id, "fields": "task_only"}
        return [{key: task.get(key) for key in wanted} for task in self._pages("api/tasks/", params, "tasks")]

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> None:
        """Add tasks (Label Studio never deduplicates: the caller sends only new ones). The response's task
        ids are not relied on: Enterprise imports run in the background and return none."""
        answer = self._json("POST", f"api/projects/{project_id}/import", json=tasks)
        if "import" in answer and "task_count" not in answer:
            self._wait(f"api/projects/{project_id}/imports/{answer['import']}", "import")

    def delete_task(self, task_id: int) -> None:
        self._request("DELETE", f"api/tasks/{task_id}/")

    # -- snapshots ------------------------------------------------------------------------------------

    def snapshot(self, project_id: int, finished_only: bool, dest: Path, timeout: float = 600.0) -> Snapshot:
        """A new export snapshot of the finished tasks (`is_labeled`), or of those with at least one
        submitted annotation, streamed to `dest` as Label Studio JSON."""
        filters = {"finished": "only"} if finished_only else {"annotated": "only"}
        title = f"rlhf pull {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
        path = f"api/projects/{project_id}/exports/"
        export = self._json("POST", path, json={"title": title, "task_filter_options": filters})
        export = self._wait(f"{path}{export['id']}", "export snapshot", export, timeout)
        sha256 = self._download(f"{path}{export['id']}/download", {"exportType": "JSON"}, dest)
        return Snapshot(int(export["id"]), str(export.get("md5") or ""), dest, sha256)

    def delete_snapshot(self, project_id: int, snapshot_id: int) -> None:
        self._request("DELETE", f"api/projects/{project_id}/exports/{snapshot_id}")

    # -- annotators -----------------------------------------------------------------------------------

    def ensure_user(self, email: str) -> int:
        """The id of the user with `email`, created (in the key owner's organization) if there is none."""
        users = self._json("GET", "api/users/")
        for user in users["results"] if isinstance(users, dict) else users:
            if user.get("email") == email:
                return int(user["id"])
        return int(self._json("POST", "api/users/", json={"email": email, "username": email})["id"])

    def annotate(
        self,
        task_id: int,
        result: list[dict[str, Any]],
        user_id: int,
        cancelled: bool = False,
        lead_time: float = 1.0,
    ) -> int:
        """Submit an annotation as `user_id` would in the UI (`cancelled`: a skip); returns its id."""
        body = {"result": result, "completed_by": user_id, "was_cancelled": cancelled, "lead_time": lead_time}
        return int(self._json("POST", f"api/tasks/{task_id}/annotations/", json=body)["id"])

    # -- transport ------------------------------------------------------------------------------------

    def _pages(self, path: str, params: dict[str, Any], key: str = "results") -> Iterator[dict[str, Any]]:
        """Every item of a paginated listing. Past the last page the server answers 404 "Invalid page"."""
        seen, page = 0, 1
        while True:
            query = {**params, "page": page, "page_size": PAGE_SIZE}
            response = self._request("GET", path, params=query, allow=(404,) if page > 1 else ())
            if response.status_code == 404:
                return
            body = _decode(response, "GET", path)
            items = body if isinstance(body, list) else body.get(key) or []
            yield from items
            seen += len(items)
            total = body.get("total", body.get("count")) if isinstance(body, dict) else None
            more = body.get("next") is not None if isinstance(body, dict) and "next" in body else True
            if not items or isinstance(body, list) or not more or (total is not None and seen >= total):
                return
            page += 1

    def _wait(
        self, path: str, what: str, state: dict[str, Any] | None = None, timeout: float = 600.0
    ) -> dict[str, Any]:
        """Poll a background job (export, import) until it completes; failing or timing out is one line."""
        deadline, delay = time.monotonic() + timeout, 0.2
        while True:
            state = state if state is not None else self._json("GET", path)
            status = state.get("status")
            if status == "completed":
                return state
            if status == "failed":
                raise AnnotationServerError(f"Label Studio at {self.url}: {what} {path} failed")
            if time.monotonic() > deadline:
                raise AnnotationServerError(
                    f"Label Studio at {self.url}: {what} {path} still {status} after {timeout:.0f}s"
                )
            time.sleep(delay)
            delay, state = min(delay * 2, 5.0), None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _decode(self._request(method, path, **kwargs), method, path)

    def _request(self, method: str, path: str, allow: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """One request with the key; a 401 on an access token refreshes it once. Errors are one line."""
        for attempt in range(2):
            headers = {"Authorization": self._authorization()}
            response = self._send(method, path, headers=headers, **kwargs)
            if response.status_code == 401 and self._claims is not None and attempt == 0:
                self._access = None  # expired early or revoked: exchange the refresh token again
                continue
            break
        status = response.status_code
        if status in allow:
            return response
        if status in (401, 403):
            raise self._refused(response)
        if response.is_error:
            raise AnnotationServerError(f"{method} /{path}: HTTP {status}: {_detail(response)}")
        return response

    def _download(self, path: str, params: dict[str, Any], dest: Path) -> str:
        """Stream a GET's body into `dest` a chunk at a time, never whole in memory; returns its sha256."""
        digest = hashlib.sha256()
        headers = {"Authorization": self._authorization()}
        try:
            with self._http.stream("GET", path, params=params, headers=headers) as response:
                if response.is_error:
                    response.read()
                    if response.status_code in (401, 403):
                        raise self._refused(response)
                    raise AnnotationServerError(
                        f"GET /{path}: HTTP {response.status_code}: {_detail(response)}"
                    )
                with dest.open("wb") as out:
                    for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise AnnotationServerError(f"Label Studio at {self.url}: unreachable ({reason})") from None
        return digest.hexdigest()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise AnnotationServerError(f"Label Studio at {self.url}: unreachable ({reason})") from None

    def _authorization(self) -> str:
        """`Token <key>` for a legacy token; `Bearer <access>` for a personal access token."""
        if self._claims is None:
            return f"Token {self._key}"
        if self._claims.get("token_type") != "refresh":
            return f"Bearer {self._key}"  # an access token given directly: used until it expires
        if self._access is None or time.time() > self._access_expires - REFRESH_MARGIN_S:
            expires = self._claims.get("exp")
            if isinstance(expires, int | float) and expires < time.time():
                raise AnnotationServerError(
                    f"Label Studio at {self.url}: the API key (a personal access token) has expired; "
                    f"create a new one and set {KEY_ENV}"
                )
            response = self._send("POST", "api/token/refresh/", json={"refresh": self._key})
            if response.status_code in (400, 401, 403):
                raise self._refused(response)
            if response.is_error:
                raise AnnotationServerError(
                    f"POST /api/token/refresh/: HTTP {response.status_code}: {_detail(response)}"
                )
            access = str(_decode(response, "POST", "api/token/refresh/").get("access", ""))
            claims = _jwt_claims(access) or {}
            self._access = access
            self._access_expires = float(claims.get("exp", time.time() + 60))
        return f"Bearer {self._access}"

    def _refused(self, response: httpx.Response) -> AnnotationServerError:
        """The key was refused: one line naming the variable to fix (and never the key)."""
        hint = ""
        if (
            "legacy token" in _detail(response).lower()
        ):  # the organization accepts personal access tokens only
            hint = " (legacy tokens are disabled on this server: use a personal access token)"
        status = response.status_code
        return AnnotationServerError(
            f"Label Studio at {self.url}: the API key was refused ({status}) — check {KEY_ENV}{hint}"
        )


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The unverified claims of a JWT (a personal access token), or None for a legacy token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header, claims = (
            json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in parts[:2]
        )
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(header, dict) and "alg" in header and isinstance(claims, dict) else None


def _decode(response: httpx.Response, method: str, path: str) -> Any:
    if response.status_code == 204 or not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        raise AnnotationServerError(
            f"{method} /{path}: HTTP {response.status_code}: expected JSON, got {_detail(response)}"
        ) from None


def _detail(response: httpx.Response) -> str:
    """A short reason from an error answer: the server's validation errors or detail, else its status text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        errors = body.get("validation_errors")
        if isinstance(errors, dict) and errors:
            text = "; ".join(
                f"{name}: {' '.join(map(str, why)) if isinstance(why, list) else why}"
                for name, why in errors.items()
            )
            return " ".join(text.split())[:300]
        if body.get("detail"):
            return " ".join(str(body["detail"]).split())[:300]
    text = " ".join(response.text.split())
    if text and not text.startswith("<") and len(text) <= 300:
        return text
    return response.reason_phrase or "no detail"
