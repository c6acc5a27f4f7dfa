"""wandb tracking: each stage run is one wandb run, offline unless the user has credentials.

A `Tracker` opens the run before the stage builds its trainer, so that the transformers/TRL
`WandbCallback` (`report_to="wandb"`) finds `wandb.run` already active and logs into it instead of
starting a run of its own. wandb is imported only when a run really starts: with tracking off, on a
non-zero rank, or in mode "disabled", nothing of wandb is imported and nothing is written.

`read_offline_run` reads a run back from its `.wandb` transaction log, so that tests and the run report
can see what was recorded without a server.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import re
import struct
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rlhf.config import TrackingConfig
from rlhf.errors import ConfigError, DataError

if TYPE_CHECKING:
    from wandb.proto.wandb_internal_pb2 import Record
    from wandb.sdk.wandb_run import Run

logger = logging.getLogger(__name__)

_WANDB_MODES = {
    "online": "online",
    "offline": "offline",
    "disabled": "disabled",
    "shared": "shared",
    "run": "online",  # legacy alias
    "dryrun": "offline",  # legacy alias
}
"""Values of WANDB_MODE that wandb accepts, mapped to the name wandb.init takes today."""

_DEFAULT_HOSTS = ("api.forge.coreweave.com", "api.wandb.ai")
"""wandb 0.31's default server and the W&B host behind it: a netrc key saved for either logs in."""


def resolve_mode(settings: TrackingConfig, environ: Mapping[str, str] = os.environ) -> str:
    """The wandb mode a run starts in: an explicit setting, else WANDB_MODE, else online only with a key.

    Offline is the default without credentials so that a run never stalls on a login prompt or a network
    it cannot reach; `wandb sync` uploads it later.
    """
    if settings.backend == "none":
        return "disabled"
    if settings.mode != "auto":
        return settings.mode
    if env_mode := environ.get("WANDB_MODE", "").strip().lower():
        if env_mode not in _WANDB_MODES:
            raise ConfigError(f"WANDB_MODE={env_mode!r}: expected one of {', '.join(sorted(_WANDB_MODES))}")
        return _WANDB_MODES[env_mode]
    return "online" if has_credentials(environ) else "offline"


def has_credentials(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether wandb could log in without asking: a key in the environment or in the netrc file."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    base_url = environ.get("WANDB_BASE_URL")
    hosts = [urlsplit(base_url).netloc] if base_url else _DEFAULT_HOSTS
    path = _netrc_path(environ)
    return any(_netrc_password(path, host) for host in hosts)


def _netrc_path(environ: Mapping[str, str]) -> Path:
    """The netrc file wandb reads: $NETRC, else ~/.netrc, else ~/_netrc."""
    if explicit := environ.get("NETRC"):
        return Path(explicit).expanduser()
    unix = Path("~/.netrc").expanduser()
    return unix if unix.exists() else Path("~/_netrc").expanduser()


def _netrc_password(path: Path, host: str) -> str | None:
    """The password (a wandb API key) saved for host, if the file exists and parses."""
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


_SECRET_WORDS = frozenset(
    {"password", "passwd", "passphrase", "secret", "apikey", "credential", "credentials", "authorization"}
)
_KEY_QUALIFIERS = frozenset({"api", "access", "private", "secret", "signing", "auth"})
"""`<qualifier>_key` is a credential; a bare `key` (e.g. a data column name) is not."""
_VOCAB_TOKENS = frozenset({"pad", "eos", "bos", "unk", "sep", "cls", "mask"})
"""`<x>_token` names a tokenizer's special token, not a credential."""


def is_secret_key(key: object) -> bool:
    """Whether a config key names a credential (hf_token, wandb_api_key, apiKey, password, ...)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower())
    words = [word for word in words if word]
    if not words:
        return False
    last, previous = words[-1], words[-2] if len(words) > 1 else ""
    if last == "token":
        return previous not in _VOCAB_TOKENS
    if last == "key":
        return previous in _KEY_QUALIFIERS
    return last in _SECRET_WORDS


def scrub_secrets(value: Any) -> Any:
    """A copy of a config with every credential-like key dropped, at any depth (dicts inside lists too)."""
    if isinstance(value, Mapping):
        return {key: scrub_secrets(item) for key, item in value.items() if not is_secret_key(key)}
    if isinstance(value, list | tuple):
        return [scrub_secrets(item) for item in value]
    return value


def _wandb_settings() -> Any:
    """Quiet, fast runs: no console capture, code snapshot or system-metrics sampler.

    The pipeline keeps its own logs in the run directory; wrapping stdout would fight progress bars and
    multi-process output, and a metrics sampler process per stage costs more than it tells on CPU runs.
    """
    import wandb

    return wandb.Settings(
        silent=True, console="off", save_code=False, disable_code=True, x_disable_stats=True
    )


class Tracker:
    """Context manager. One per stage run, only on rank 0 (other ranks get a disabled tracker)."""

    def __init__(
        self,
        settings: TrackingConfig,
        *,
        group: str,
        job_type: str,
        name: str,
        config: Mapping[str, Any],
        run_dir: Path,
        enabled: bool = True,
    ) -> None:
        self.settings = settings
        self.group = group
        self.job_type = job_type
        self.name = name
        self.config = scrub_secrets(config)
        self.run_dir = Path(run_dir)
        self.mode = resolve_mode(settings) if enabled else "disabled"
        self.report_to = "none" if self.mode == "disabled" else "wandb"
        self.run_id: str | None = None
        self.run_path: Path | None = None
        self._run: Run | None = None

    def __enter__(self) -> Tracker:
        if self.report_to == "wandb":
            self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Finish the run (exit code 1 if the stage raised) with its transaction log complete on disk.

        `run.finish()` returns while wandb-core may still be writing the log; `wandb.teardown()` waits for
        the service to close it, so the run record can be read back at once. The next stage's run starts
        a fresh service (~0.2 s).
        """
        if self._run is None:
            return
        import wandb

        run, self._run = self._run, None
        run.finish(exit_code=0 if exc_type is None else 1)
        wandb.teardown()

    def _start(self) -> None:
        """Open the run as `wandb.run` (finishing any run a previous stage left open)."""
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._run = wandb.init(
                project=self.settings.project,
                entity=self.settings.entity,
                group=self.group,
                job_type=self.job_type,
                name=self.name,
                tags=list(self.settings.tags),
                config=self.config,
                dir=str(self.run_dir.resolve()),
                mode=self.mode,
                reinit="finish_previous",
                settings=_wandb_settings(),
            )
        except wandb.errors.Error as err:
            raise ConfigError(
                f"tracking: wandb could not start the {self.mode} run ({err}); "
                "set tracking.mode: offline or WANDB_MODE=offline to track without a server"
            ) from err
        self.run_id = self._run.id
        self.run_path = Path(self._run.settings.sync_dir)
        logger.info("wandb %s run %s: %s", self.mode, self.run_id, self.run_path)

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log one history row.

        Leave `step` None in stages where the Trainer logs too: wandb ignores (with a warning) a row whose
        step is behind the Trainer's.
        """
        if self._run is not None:
            self._run.log(dict(metrics), step=step)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Set the run's final figures (what the wandb runs table shows)."""
        if self._run is not None:
            self._run.summary.update(dict(metrics))

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Log a table, e.g. sample generations: prompt, completion, reward."""
        if self._run is None:
            return
        import wandb

        self._run.log({key: wandb.Table(columns=columns, data=rows)})

    def log_images(self, images: Mapping[str, Path]) -> None:
        """Log PNG files as wandb images (one history row), e.g. the run report's figures."""
        if self._run is None or not images:
            return
        import wandb

        self._run.log({key: wandb.Image(str(path)) for key, path in images.items()})

    def log_files(self, name: str, kind: str, root: Path, files: list[Path]) -> None:
        """An artifact holding copies of `files` under their paths relative to `root`, so that a document and
        the figures it links (e.g. the run report) arrive together and stay readable when downloaded."""
        if self._run is None:
            return
        import wandb

        artifact = wandb.Artifact(name, type=kind)
        for path in files:
            artifact.add_file(str(path), name=Path(path).relative_to(root).as_posix())
        self._run.log_artifact(artifact)

    def log_model(self, name: str, version: str, path: Path, metadata: Mapping[str, Any]) -> None:
        """A wandb model artifact for a registry version that *references* its files (file:// URI): nothing
        is uploaded twice, and the artifact's versions line up with the registry's (`v1`, `latest`, ...)."""
        if self._run is None:
            return
        import wandb

        artifact = wandb.Artifact(
            name, type="model", metadata=scrub_secrets({"registry_version": version, **metadata})
        )
        artifact.add_reference(Path(path).absolute().as_uri(), checksum=False)
        self._run.log_artifact(artifact, aliases=[version, "latest"])

    def use_models(self, refs: list[str]) -> None:
        """Record the registry versions this run consumed: in the config always; as wandb artifact use when
        online (wandb refuses `use_artifact` offline, so offline runs carry the lineage in their config)."""
        if self._run is None or not refs:
            return
        self._run.config.update({"inputs": {"models": refs}}, allow_val_change=True)
        if self.mode != "online":
            return
        for ref in refs:
            try:
                self._run.use_artifact(ref, type="model")
            except Exception as err:  # an artifact logged by an offline run that was never synced
                logger.warning("wandb: cannot mark %s as used (%s)", ref, err)


_LOG_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_LOG_HEADER_VALUE = (b":W&B", 0xBEE1, 0)
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32 of kind + payload, payload length, kind
_BLOCK_SIZE = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_KINDS = (_FULL, _FIRST, _MIDDLE, _LAST)


def read_offline_run(path: Path) -> dict[str, Any]:
    """What a run recorded, read from its `.wandb` transaction log (a run directory or the file itself).

    Returns run_id, project, entity, group, job_type, name, tags, config, history (one dict per step,
    with `_step`), summary, artifacts logged (name, type, aliases, metadata, references, files) and exit_code
    (None while the run is unfinished). Nested keys become nested dicts; wandb's own `_wandb` bookkeeping is
    left out.
    """
    path = Path(path)
    files = sorted(path.glob("run-*.wandb")) if path.is_dir() else [path]
    if len(files) != 1:
        raise DataError(f"{path}: expected one run-*.wandb file, found {len(files)}")
    run: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "artifacts": [], "exit_code": None}
    for record in _records(files[0]):
        _apply(run, record)
    for section in ("config", "summary"):
        run[section].pop("_wandb", None)
    return run


def _apply(run: dict[str, Any], record: Record) -> None:
    """Fold one transaction-log record into the run dict."""
    kind = record.WhichOneof("record_type")
    if kind == "run":
        info = record.run
        run.update(
            run_id=info.run_id,
            project=info.project,
            entity=info.entity or None,
            group=info.run_group,
            job_type=info.job_type,
            name=info.display_name,
            tags=list(info.tags),
        )
        _update(run["config"], info.config.update, info.config.remove)
    elif kind == "config":
        _update(run["config"], record.config.update, record.config.remove)
    elif kind == "summary":
        _update(run["summary"], record.summary.update, record.summary.remove)
    elif kind == "history":
        row: dict[str, Any] = {}
        _update(row, record.history.item, [])
        run["history"].append(row)
    elif kind == "artifact":
        artifact = record.artifact
        references = [entry.ref for entry in artifact.manifest.contents if entry.ref]
        files = [entry.path for entry in artifact.manifest.contents if not entry.ref]
        run["artifacts"].append(
            {"name": artifact.name, "type": artifact.type, "aliases": list(artifact.aliases),
             "metadata": json.loads(artifact.metadata or "{}"), "references": references, "files": files}
        )  # fmt: skip
    elif kind == "exit":
        run["exit_code"] = record.exit.exit_code


def _update(target: dict[str, Any], items: Any, removals: Any) -> None:
    """Apply wandb's (nested_)key/value_json items to a nested dict."""
    for item in items:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = target
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(item.value_json)
    for item in removals:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = target
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)


def _records(path: Path) -> Iterator[Record]:
    """The protobuf records of a transaction log (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    if len(data) < _LOG_HEADER.size or _LOG_HEADER.unpack_from(data) != _LOG_HEADER_VALUE:
        raise DataError(f"{path}: not a wandb transaction log of format version 0")
    pending = b""
    for kind, payload in _chunks(path, data):
        if kind in (_FULL, _FIRST):
            pending = payload
        else:
            pending += payload
        if kind in (_FULL, _LAST):
            record = Record()
            record.ParseFromString(pending)
            yield record


def _chunks(path: Path, data: bytes) -> Iterator[tuple[int, bytes]]:
    """(kind, payload) of each chunk, checksums verified; a tail cut short by a killed writer is ignored."""
    offset = _LOG_HEADER.size
    while offset + _CHUNK_HEADER.size <= len(data):
        room = _BLOCK_SIZE - offset % _BLOCK_SIZE
        if room < _CHUNK_HEADER.size:  # too little room for a chunk header: the block ends in zero padding
            offset += room
            continue
        checksum, length, kind = _CHUNK_HEADER.unpack_from(data, offset)
        start = offset + _CHUNK_HEADER.size
        payload = data[start : start + length]
        if len(payload) < length:
            return
        if kind not in _KINDS or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != checksum:
            raise DataError(f"{path}: corrupt record at byte {offset}")
        yield kind, payload
        offset = start + length
