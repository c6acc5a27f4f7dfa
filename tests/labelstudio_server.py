"""A real Label Studio server for the `labelstudio` tests: started once per session, stopped at its end.

It runs from a venv of its own (`scripts/setup_labelstudio.sh`; its dependencies would downgrade ours), in a
clean environment: Label Studio also reads unprefixed variables such as HOST, USERNAME and PORT, so a
developer's shell must not leak into it. Its data (SQLite, exports) lives in a temporary folder; the admin
user and its legacy token are made up per session, which also proves that the server answering on the port
is this one (`label-studio start` silently moves to the next port when the asked one is busy).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240
ADMIN = "admin@rlhf.invalid"


@dataclass
class LabelStudioServer:
    """The running server: its URL, the admin's legacy token, where its data and log are."""

    url: str
    token: str = field(repr=False)
    data_dir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    _pat: str | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.data_dir / "server.log"

    def personal_access_token(self) -> str:
        """The admin's personal access token (a JWT refresh token); the server allows one per user."""
        if self._pat is None:
            response = httpx.post(f"{self.url}/api/token/", headers={"Authorization": f"Token {self.token}"})
            response.raise_for_status()
            self._pat = response.json()["token"]
        return self._pat


def label_studio_binary() -> Path | None:
    """`$RLHF_LABEL_STUDIO`, else label-studio in `$RLHF_LS_VENV` (default `.venv-labelstudio`)."""
    if explicit := os.environ.get("RLHF_LABEL_STUDIO"):
        return Path(explicit) if os.access(explicit, os.X_OK) else None
    venv = Path(os.environ.get("RLHF_LS_VENV", REPO / ".venv-labelstudio"))
    binary = venv / "bin" / "label-studio"
    return binary if os.access(binary, os.X_OK) else None


@contextlib.contextmanager
def running_label_studio(data_dir: Path) -> Iterator[LabelStudioServer]:
    """Start the server with its data under `data_dir`, wait until it answers, and stop it afterwards."""
    binary = label_studio_binary()
    if binary is None:
        pytest.skip(
            "label-studio not installed: bash scripts/setup_labelstudio.sh (or set RLHF_LABEL_STUDIO)"
        )
    port, token = _free_port(), secrets.token_hex(20)
    env = {  # the whole environment, as `env -i` would leave it
        "PATH": f"{binary.parent}:/usr/bin:/bin",
        "HOME": str(data_dir / "home"),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir / "data"),  # else even --help writes ~/.local/share
        "LABEL_STUDIO_USERNAME": ADMIN,
        "LABEL_STUDIO_PASSWORD": secrets.token_hex(12),
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # only read when the organization is created
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "SECRET_KEY": secrets.token_hex(32),
        "LATEST_VERSION_CHECK": "false",  # else it asks PyPI
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",  # else the built-in DSN reports errors
        "FRONTEND_SENTRY_DSN": "",
    }
    command = [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
    (data_dir / "home").mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, cwd=data_dir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LabelStudioServer(f"http://127.0.0.1:{port}", token, data_dir, process)
    try:
        _wait_until_up(server)
        yield server
    finally:
        _stop(process)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(server: LabelStudioServer) -> None:
    """/health answers 200, then our own token is accepted on the port (so it is our server)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"Label Studio exited with {server.process.returncode} on start:\n{_tail(server.log)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                headers = {"Authorization": f"Token {server.token}"}
                whoami = httpx.get(f"{server.url}/api/current-user/whoami", headers=headers, timeout=10)
                version = httpx.get(f"{server.url}/api/version", headers=headers, timeout=10)
                if whoami.status_code == 200 and whoami.json().get("email") == ADMIN and version.is_success:
                    return
        time.sleep(1)
    pytest.fail(
        f"Label Studio did not answer on {server.url} within {START_TIMEOUT_S}s:\n{_tail(server.log)}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
