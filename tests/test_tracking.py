"""Tracking writes real offline wandb runs; every assertion reads them back from disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config import TrackingConfig
from rlhf.errors import ConfigError, DataError
from rlhf.tracking import Tracker, is_secret_key, read_offline_run, resolve_mode

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_wandb_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key, no mode, no server: `auto` must land on offline, and wandb's caches stay in tmp_path."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


def make_tracker(run_dir: Path, settings: TrackingConfig | None = None, **overrides: object) -> Tracker:
    options: dict = {"group": "pipe-20260101-abcd", "job_type": "sft", "name": "sft", "config": {"lr": 1e-4}}
    return Tracker(settings or TrackingConfig(), run_dir=run_dir, **(options | overrides))


def test_stage_run_is_recorded_with_group_job_type_config_history_summary_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # The long note makes the run record span several 32 KiB log blocks, exercising chunk reassembly.
    config = {"lr": 1e-4, "model": {"name": "tiny-llama", "layers": 2}, "note": "x" * 80_000}
    tracker = make_tracker(tmp_path / "run", TrackingConfig(tags=("smoke",)), config=config)
    assert tracker.report_to == "wandb"

    with tracker:
        assert wandb.run is not None and wandb.run.id == tracker.run_id  # what WandbCallback will reuse
        for step, loss in enumerate([1.0, 0.5, 0.25]):
            tracker.log({"train/loss": loss}, step=step)
        tracker.summary({"final_loss": 0.25})
        tracker.log_table("samples", ["prompt", "completion"], [["2+2=", "4"], ["3+3=", "6"]])

    assert wandb.run is None
    assert tracker.run_path is not None and tracker.run_path.is_relative_to(tmp_path / "run")
    assert list(cwd.iterdir()) == []
    run = read_offline_run(tracker.run_path)
    assert (run["run_id"], run["project"], run["group"], run["job_type"]) == (
        tracker.run_id,
        "rlhf",
        "pipe-20260101-abcd",
        "sft",
    )
    assert run["name"] == "sft" and run["tags"] == ["smoke"]
    assert run["config"] == config
    losses = [(row["_step"], row["train/loss"]) for row in run["history"] if "train/loss" in row]
    assert losses == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert run["summary"]["final_loss"] == 0.25
    assert run["summary"]["train/loss"] == 0.25
    assert run["exit_code"] == 0
    (table_ref,) = [row["samples"] for row in run["history"] if "samples" in row]
    table = json.loads((tracker.run_path / "files" / table_ref["path"]).read_text())
    assert table["columns"] == ["prompt", "completion"]
    assert table["data"] == [["2+2=", "4"], ["3+3=", "6"]]


def test_sequential_stages_get_their_own_runs_and_a_failed_one_is_marked(tmp_path: Path) -> None:
    with make_tracker(tmp_path / "sft") as sft:
        sft.log({"loss": 1.0})
    with (
        pytest.raises(RuntimeError, match="diverged"),
        make_tracker(tmp_path / "reward", job_type="reward") as rm,
    ):
        rm.log({"loss": 2.0})
        raise RuntimeError("diverged")

    assert sft.run_id != rm.run_id
    first, second = read_offline_run(sft.run_path), read_offline_run(rm.run_path)
    assert (first["job_type"], first["exit_code"], first["history"][0]["loss"]) == ("sft", 0, 1.0)
    assert (second["job_type"], second["exit_code"], second["history"][0]["loss"]) == ("reward", 1, 2.0)


def test_secrets_are_dropped_from_the_logged_config(tmp_path: Path) -> None:
    config = {
        "hf_token": "hf_SECRET1",
        "model": {"name": "tiny-llama", "pad_token": "<pad>", "wandbApiKey": "SECRET2"},
        "optimizers": [{"lr": 0.1, "password": "SECRET3"}],
        "data": {"text_key": "prompt", "max_new_tokens": 8},
    }
    with make_tracker(tmp_path / "run", config=config) as tracker:
        pass

    assert read_offline_run(tracker.run_path)["config"] == {
        "model": {"name": "tiny-llama", "pad_token": "<pad>"},
        "optimizers": [{"lr": 0.1}],
        "data": {"text_key": "prompt", "max_new_tokens": 8},
    }
    leaks = [
        path for path in (tmp_path / "run").rglob("*") if path.is_file() and b"SECRET" in path.read_bytes()
    ]
    assert leaks == []


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("hf_token", True),
        ("HUB_TOKEN", True),
        ("token", True),
        ("use_auth_token", True),
        ("api_key", True),
        ("openaiApiKey", True),
        ("aws_secret_access_key", True),
        ("client_secret", True),
        ("db-password", True),
        ("pad_token", False),
        ("eos_token", False),
        ("max_new_tokens", False),
        ("tokenizer", False),
        ("text_key", False),
        ("key", False),
        ("password_file_hint", False),
    ],
)
def test_secret_keys_are_told_from_tokenizer_and_data_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


@pytest.mark.parametrize(
    "tracker_args",
    [
        {"settings": TrackingConfig(backend="none")},
        {"settings": TrackingConfig(mode="disabled")},
        {"enabled": False},
    ],
    ids=["backend-none", "mode-disabled", "non-zero-rank"],
)
def test_disabled_tracker_is_a_silent_no_op(tmp_path: Path, tracker_args: dict) -> None:
    tracker = make_tracker(tmp_path / "run", **tracker_args)
    with tracker:
        tracker.log({"loss": 1.0}, step=0)
        tracker.summary({"final_loss": 1.0})
        tracker.log_table("samples", ["prompt"], [["hi"]])

    assert (tracker.report_to, tracker.run_id, tracker.run_path) == ("none", None, None)
    assert not (tmp_path / "run").exists()


def test_tracking_off_never_imports_wandb(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path\n"
        "from rlhf.config import TrackingConfig; from rlhf.tracking import Tracker\n"
        f"t = Tracker(TrackingConfig(backend='none'), group='g', job_type='sft', name='n', config={{}},"
        f" run_dir=Path({str(tmp_path / 'run')!r}))\n"
        "with t: t.log({'loss': 1.0})\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
    )
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def write_netrc(path: Path, host: str) -> Path:
    path.write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")
    return path


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "offline"),
        ({"WANDB_API_KEY": "k" * 40}, "online"),
        ({"WANDB_MODE": "offline", "WANDB_API_KEY": "k" * 40}, "offline"),
        ({"WANDB_MODE": "online"}, "online"),
        ({"WANDB_MODE": "disabled"}, "disabled"),
        ({"WANDB_MODE": "dryrun"}, "offline"),
        ({"NETRC": "api.wandb.ai"}, "online"),
        ({"NETRC": "api.forge.coreweave.com"}, "online"),
        ({"NETRC": "github.com"}, "offline"),
        ({"NETRC": "wandb.example.org", "WANDB_BASE_URL": "https://wandb.example.org"}, "online"),
        ({"NETRC": "api.wandb.ai", "WANDB_BASE_URL": "https://wandb.example.org"}, "offline"),
    ],
)
def test_auto_mode_honours_wandb_mode_then_credentials(tmp_path: Path, environ: dict, expected: str) -> None:
    """`NETRC` here names the host the netrc file holds a key for; no network call is made."""
    netrc_path = tmp_path / "netrc"
    if host := environ.get("NETRC"):
        environ = environ | {"NETRC": str(write_netrc(netrc_path, host))}
    else:
        environ = environ | {"NETRC": str(netrc_path)}
    assert resolve_mode(TrackingConfig(), environ) == expected


def test_explicit_mode_and_backend_none_win_over_the_environment() -> None:
    environ = {"WANDB_MODE": "online", "WANDB_API_KEY": "k" * 40}
    assert resolve_mode(TrackingConfig(mode="offline"), environ) == "offline"
    assert resolve_mode(TrackingConfig(backend="none"), environ) == "disabled"


def test_unknown_wandb_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="WANDB_MODE='ofline'"):
        resolve_mode(TrackingConfig(), {"WANDB_MODE": "ofline"})


def test_reader_catches_corruption_and_tolerates_a_cut_tail(tmp_path: Path) -> None:
    with make_tracker(tmp_path / "run", config={"model": "tiny-llama"}) as tracker:
        tracker.log({"loss": 1.0})
    (log_file,) = tracker.run_path.glob("run-*.wandb")
    data = log_file.read_bytes()

    log_file.write_bytes(data[: len(data) // 2])
    cut = read_offline_run(log_file)
    assert cut["config"] == {"model": "tiny-llama"} and cut["exit_code"] is None

    log_file.write_bytes(data.replace(b"tiny-llama", b"tiny-llamb"))
    with pytest.raises(DataError, match="corrupt record"):
        read_offline_run(log_file)


def test_a_run_wandb_refuses_to_start_is_a_one_line_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed key is refused before any connection; the server address is a closed local port anyway."""
    monkeypatch.setenv("WANDB_API_KEY", "short")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    tracker = make_tracker(tmp_path / "run")
    assert tracker.mode == "online"
    with pytest.raises(ConfigError, match="WANDB_MODE=offline"), tracker:
        pass
