"""The model registry: how stages hand models to each other, with versions, aliases, lineage and integrity.

SFT publishes `sft-policy`, the reward stage `reward-model`, the policy stages `policy`; a later stage
asks for `registry:sft-policy:latest` (or `:v3`, `:best`) and gets a local directory. Version names
(`v1`, `v2`, ...) and aliases (`latest`, `best`, custom) follow wandb's artifact conventions.

Layout of a registry directory (explicit path > $RLHF_REGISTRY > ./registry)::

    index.json              the truth: {"format": 1, "models": {name: {"last_version": N,
                              "versions": {"v1": manifest, ...}, "aliases": {"latest": "v1", ...}}}}
    .lock                   fcntl.flock taken for every index update (readers never take it)
    .staging/<uuid>/        a version being assembled; flock-ed on its directory by its publisher
    .index-<uuid>.tmp       an index being written
    models/<name>/<vN>/     committed files + manifest.json (a copy of the index entry)

Commit protocol (a crash at any point leaves no half version visible, and a retry succeeds):

1. Outside the lock: hard-link (or copy) the source files into `.staging/<uuid>`, hash and fsync them.
2. Under the lock: N = 1 + max(`last_version`, every `vN` directory on disk); a directory left by a
   crashed publisher is never reused. Write manifest.json, rename staging -> models/<name>/vN, then
   replace index.json atomically (temp file + fsync + os.replace). The index update is the commit
   point: a directory the index does not list is invisible, and `gc` removes it.
3. After the commit, mode "move" deletes the source directory. Staging by hard link and deleting the
   source afterwards costs what a rename costs, yet a crash never leaves a half-moved source behind.

Version numbers are never reused, not even after `remove`, so `policy:v3` always means one model.
`latest` always points at the highest version: publish and remove move it, `set_alias` refuses it.
Only stdlib here: the registry knows nothing of training.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

from rlhf.errors import RegistryError

REF_PREFIX = "registry:"
ENV_VAR = "RLHF_REGISTRY"
DEFAULT_PATH = "registry"
LATEST = "latest"
MANIFEST = "manifest.json"
INDEX_FORMAT = 1

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^v[1-9][0-9]*$")
_VERSION_LIKE = re.compile(r"^v[0-9]+$")
_SECRET_WORDS = frozenset(
    {"secret", "password", "passwd", "passphrase", "credential", "credentials", "apikey"}
)
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key")})
_SPECIAL_TOKENS = frozenset({"pad", "bos", "eos", "unk", "sep", "cls", "mask"})
"""`pad_token` and friends name a tokenizer's special token, not a credential."""


def default_registry_path(configured: str | Path | None = None) -> Path:
    """The registry directory: an explicit argument > $RLHF_REGISTRY > ./registry.

    Pass `configured` only when the user set it explicitly (a config file's default must not beat the
    environment), so that a caller's deliberate choice always wins.
    """
    return Path(configured or os.environ.get(ENV_VAR) or DEFAULT_PATH).expanduser()


def is_reference(text: str) -> bool:
    """Whether a model spec points into the registry (as opposed to a HF id or a directory)."""
    return text.startswith(REF_PREFIX)


def _check_name(text: str, what: str) -> str:
    """A model name or alias that cannot escape the registry folder."""
    if not _NAME.match(text):
        raise RegistryError(f"registry: bad {what} {text!r}: expected [a-z0-9][a-z0-9._-]{{0,63}}")
    return text


def _check_alias(alias: str) -> str:
    """An alias a user may set: valid, not version-like, and not the managed `latest`."""
    _check_name(alias, "alias")
    if _VERSION_LIKE.match(alias):
        raise RegistryError(f"registry: alias {alias!r} looks like a version; pick a name such as 'best'")
    if alias == LATEST:
        raise RegistryError(
            "registry: 'latest' always points at the newest version; publish and remove move it"
        )
    return alias


@dataclass(frozen=True)
class Reference:
    """A model name plus a selector: a version (`v3`) or an alias (`latest`, `best`, custom)."""

    name: str
    selector: str = LATEST

    def __post_init__(self) -> None:
        _check_name(self.name, "model name")
        if _VERSION_LIKE.match(self.selector) and not _VERSION.match(self.selector):
            raise RegistryError(f"registry: bad version {self.selector!r}: expected v1, v2, ...")
        _check_name(self.selector, "version or alias")

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Accept `registry:NAME:SEL`, `registry:NAME` (= latest), `NAME:SEL` and `NAME`."""
        body = text.removeprefix(REF_PREFIX)
        parts = body.split(":")
        if len(parts) > 2:
            raise RegistryError(f"registry: bad reference {text!r}: expected registry:NAME[:VERSION|ALIAS]")
        return cls(*parts)

    @property
    def is_version(self) -> bool:
        """Whether the selector names a concrete version rather than an alias."""
        return bool(_VERSION.match(self.selector))

    def __str__(self) -> str:
        return f"{self.name}:{self.selector}"


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its path relative to the version directory, size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass
class Manifest:
    """Everything known about one version: its files, where it came from, and how it scored."""

    name: str
    version: str
    stage: str | None
    files: list[FileEntry]
    base_model: str | None
    parents: list[str]  # concrete "name:vN" of the versions it was built from
    datasets: list[dict[str, Any]]  # {"name", "fingerprint", "path"}
    config: dict[str, Any]  # secrets dropped
    config_hash: str  # sha256 of the canonical JSON of `config`
    metrics: dict[str, float]
    code_version: str | None  # git commit of the publishing cwd, "+dirty" when tracked files changed
    wandb_run_id: str | None
    created_at: str  # ISO 8601, UTC
    host: str
    lora_base: str | None  # for an adapter-only version: the model it applies to
    extra: dict[str, Any]

    @property
    def ref(self) -> str:
        """The concrete reference, `name:vN`, as parents and lineage write it."""
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, as index.json stores it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """The inverse of `to_dict`."""
        return cls(**{**data, "files": [FileEntry(**entry) for entry in data["files"]]})

    def to_json(self) -> str:
        """The text of manifest.json."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Read manifest.json text back."""
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class ModelEntry:
    """One model in a listing: its versions, oldest first, and its aliases (alias -> version)."""

    name: str
    versions: list[Manifest]
    aliases: dict[str, str]


class PublishOptions(TypedDict, total=False):
    """The lineage and metadata a version can carry; see `Registry.publish`."""

    stage: str | None
    base_model: str | None
    parents: Iterable[str | Reference]
    datasets: Iterable[Mapping[str, Any]]
    config: Mapping[str, Any] | None
    metrics: Mapping[str, float] | None
    wandb_run_id: str | None
    lora_base: str | None
    extra: Mapping[str, Any] | None


class Registry:
    """A registry directory; safe to use from many processes at once (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()

    # ---------------------------------------------------------------------------------------------
    # Publishing

    def publish(
        self,
        name: str,
        source_dir: str | Path,
        *,
        stage: str | None = None,
        base_model: str | None = None,
        parents: Iterable[str | Reference] = (),
        datasets: Iterable[Mapping[str, Any]] = (),
        config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        wandb_run_id: str | None = None,
        lora_base: str | None = None,
        extra: Mapping[str, Any] | None = None,
        mode: Literal["move", "link", "copy"] = "move",
    ) -> Manifest:
        """Commit the files of `source_dir` as the next version of `name`; `latest` moves to it.

        mode "move" takes the files and deletes the source (hard links, then removal after the commit:
        no data is copied on one filesystem); "link" hard-links them and keeps the source (copy across
        filesystems); "copy" makes an independent copy. Parents and a `registry:` lora_base are
        resolved to concrete versions, which must exist.
        """
        _check_name(name, "model name")
        if mode not in ("move", "link", "copy"):
            raise RegistryError(f"registry: bad mode {mode!r}: expected move, link or copy")
        source = Path(source_dir)
        files = self._source_files(source)
        index = self._read_index()
        parent_refs = list(dict.fromkeys(self._find(index, parent)[0].ref for parent in parents))
        if lora_base is not None and is_reference(lora_base):
            lora_base = REF_PREFIX + self._find(index, lora_base)[0].ref
        clean_config = _jsonable(_drop_secrets(dict(config or {})))
        fields: dict[str, Any] = {
            "name": name,
            "stage": stage,
            "base_model": base_model,
            "parents": parent_refs,
            "datasets": [_check_dataset(entry) for entry in datasets],
            "config": clean_config,
            "config_hash": config_hash(clean_config),
            "metrics": _check_metrics(metrics or {}),
            "code_version": _code_version(),
            "wandb_run_id": wandb_run_id,
            "host": socket.gethostname(),
            "lora_base": lora_base,
            "extra": _jsonable(_drop_secrets(dict(extra or {}))),
        }
        with self._staging() as staging:
            entries = [_stage_file(path, staging / rel, rel, copy=mode == "copy") for rel, path in files]
            _fsync_tree(staging)
            manifest = self._commit(staging, fields, entries)
        if mode == "move":
            self._discard(source)
        return manifest

    def add(self, name: str, model_dir: str | Path, **options: Unpack[PublishOptions]) -> Manifest:
        """Register an existing HF model directory by hard link (copy across filesystems); the user's
        files stay where they are. It must hold config.json or adapter_config.json and *.safetensors."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise RegistryError(f"registry: {model_dir} is not a directory")
        if not any((model_dir / marker).is_file() for marker in ("config.json", "adapter_config.json")):
            raise RegistryError(
                f"registry: {model_dir} has no config.json or adapter_config.json; not a HF model"
            )
        if not any(model_dir.glob("*.safetensors")):
            raise RegistryError(f"registry: {model_dir} has no *.safetensors weights")
        return self.publish(name, model_dir, mode="link", **options)

    def _source_files(self, source: Path) -> builtins.list[tuple[str, Path]]:
        """(relative posix path, absolute path) of every file under `source`, symlinks followed."""
        if not source.is_dir():
            raise RegistryError(f"registry: source {source} is not a directory")
        inner, outer = source.resolve(), self.root.resolve()
        if inner.is_relative_to(outer) or outer.is_relative_to(inner):
            raise RegistryError(f"registry: source {source} overlaps the registry {self.root}")
        files = sorted(
            (Path(folder, file).relative_to(source).as_posix(), Path(folder, file))
            for folder, _, names in os.walk(source, followlinks=True)
            for file in names
        )
        if not files:
            raise RegistryError(f"registry: source {source} has no files")
        if any(rel == MANIFEST for rel, _ in files):
            raise RegistryError(f"registry: source {source} has a {MANIFEST}, a name the registry reserves")
        return files

    def _discard(self, source: Path) -> None:
        """Delete a moved source. Renamed into staging first (one atomic step on one filesystem), so
        that a crash midway never leaves a half-deleted source for a retry to publish; gc ends the job."""
        with contextlib.suppress(OSError):
            source = source.rename(self.root / ".staging" / uuid.uuid4().hex)
        shutil.rmtree(source, ignore_errors=True)

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        """A fresh staging directory, flock-ed so that `gc` can tell it from a crashed publisher's."""
        with self._locked():
            path = self.root / ".staging" / uuid.uuid4().hex
            path.mkdir(parents=True)
            fd = os.open(path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)  # gone already once committed
            os.close(fd)

    def _commit(self, staging: Path, fields: dict[str, Any], entries: builtins.list[FileEntry]) -> Manifest:
        """Step 2 of the protocol: number, rename, and the index update that makes it visible."""
        name = fields["name"]
        with self._locked():
            index = self._read_index()
            for parent in [*fields["parents"], *_lora_refs(fields["lora_base"])]:
                self._find(index, parent)  # still there: a parent removed meanwhile fails the publish
            model = index["models"].setdefault(name, {"last_version": 0, "versions": {}, "aliases": {}})
            number = 1 + max([model["last_version"], *self._versions_on_disk(name)])
            created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            manifest = Manifest(**fields, version=f"v{number}", files=entries, created_at=created)
            _write_durable(staging / MANIFEST, manifest.to_json())
            target = self._version_dir(name, manifest.version)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, target)
            _fsync_dir(target.parent)
            model["last_version"] = number
            model["versions"][manifest.version] = manifest.to_dict()
            model["aliases"][LATEST] = manifest.version
            self._write_index(index)
        return manifest

    def _versions_on_disk(self, name: str) -> builtins.list[int]:
        """Numbers of the vN directories of a model, committed or not."""
        folder = self.root / "models" / name
        if not folder.is_dir():
            return []
        return [int(entry.name[1:]) for entry in folder.iterdir() if _VERSION.match(entry.name)]

    # ---------------------------------------------------------------------------------------------
    # Reading

    def resolve(self, ref: str | Reference, *, verify: bool = False) -> Path:
        """The directory of a version. Every file's size is checked (cheap); with `verify`, its
        sha256 too. A missing or corrupt file raises, naming it."""
        manifest, folder = self._find(self._read_index(), ref)
        problems = _check_version(manifest, folder, full=verify)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise RegistryError(f"registry: {problems[0]}{more}")
        return folder

    def manifest(self, ref: str | Reference) -> Manifest:
        """The manifest of a version, from the index."""
        return self._find(self._read_index(), ref)[0]

    def list(self) -> dict[str, ModelEntry]:
        """Every model with at least one version, by name."""
        return {
            name: ModelEntry(
                name=name,
                versions=[Manifest.from_dict(model["versions"][v]) for v in _sorted_versions(model)],
                aliases=dict(sorted(model["aliases"].items())),
            )
            for name, model in sorted(self._read_index()["models"].items())
            if model["versions"]
        }

    def find_identical(self, name: str, model_dir: str | Path) -> Manifest | None:
        """The newest version of `name` whose files equal `model_dir`'s (same paths, sizes and sha256), if any:
        registering the same base model twice then reuses one version instead of storing a second."""
        entry = self.list().get(_check_name(name, "model name"))
        if entry is None:
            return None
        files = dict(self._source_files(Path(model_dir)))
        sizes = {rel: path.stat().st_size for rel, path in files.items()}
        hashes: dict[str, str] = {}  # hashed on first need, once: sizes rule out most versions

        def digest(rel: str) -> str:
            if rel not in hashes:
                hashes[rel] = _sha256(files[rel])
            return hashes[rel]

        for manifest in reversed(entry.versions):
            known = {f.path: f for f in manifest.files}
            if (
                known.keys() == sizes.keys()
                and all(known[rel].size == sizes[rel] for rel in sizes)
                and all(known[rel].sha256 == digest(rel) for rel in sizes)
            ):
                return manifest
        return None

    def find_by_fingerprint(self, name: str, fingerprint: str) -> Manifest | None:
        """The newest version of `name` that a pipeline stage with this fingerprint published (its resolved
        config and inputs hashed), if any: the pipeline then reuses it instead of training the stage again."""
        entry = self.list().get(_check_name(name, "model name"))
        versions = entry.versions if entry else []
        return next((m for m in reversed(versions) if m.extra.get("fingerprint") == fingerprint), None)

    def lineage(self, ref: str | Reference) -> dict[str, Any]:
        """The tree a version came from, back to its base model and datasets.

        Each node: {"ref", "stage", "base_model", "lora_base", "datasets", "config_hash", "parents"};
        a parent removed with force appears as {"ref", "missing": True, "parents": []}.
        """
        index = self._read_index()
        return self._lineage_node(index, self._find(index, ref)[0].ref)

    def _lineage_node(self, index: dict[str, Any], ref: str) -> dict[str, Any]:
        target = Reference.parse(ref)
        data = index["models"].get(target.name, {}).get("versions", {}).get(target.selector)
        if data is None:
            return {"ref": ref, "missing": True, "parents": []}
        parents = list(dict.fromkeys([*data["parents"], *_lora_refs(data["lora_base"])]))
        return {
            "ref": ref,
            "stage": data["stage"],
            "base_model": data["base_model"],
            "lora_base": data["lora_base"],
            "datasets": data["datasets"],
            "config_hash": data["config_hash"],
            "parents": [self._lineage_node(index, parent) for parent in parents],
        }

    def verify(self, ref: str | Reference | None = None) -> builtins.list[str]:
        """Re-hash one version, or every version; the problems found, empty when all is clean."""
        index = self._read_index()
        if ref is not None:
            return _check_version(*self._find(index, ref), full=True)
        return [
            problem
            for name, model in sorted(index["models"].items())
            for version in _sorted_versions(model)
            for problem in _check_version(
                Manifest.from_dict(model["versions"][version]), self._version_dir(name, version), full=True
            )
        ]

    def _find(self, index: dict[str, Any], ref: str | Reference) -> tuple[Manifest, Path]:
        """The manifest and directory a reference points at; unknown ones list what exists."""
        target = ref if isinstance(ref, Reference) else Reference.parse(ref)
        model = self._model(index, target.name)
        version = target.selector if target.is_version else model["aliases"].get(target.selector)
        if version not in model["versions"]:
            versions = ", ".join(_sorted_versions(model))
            aliases = ", ".join(sorted(model["aliases"])) or "(none)"
            raise RegistryError(
                f"registry: {target.name} has no version or alias {target.selector!r}; "
                f"versions: {versions}; aliases: {aliases}"
            )
        return Manifest.from_dict(model["versions"][version]), self._version_dir(target.name, version)

    def _model(self, index: dict[str, Any], name: str) -> dict[str, Any]:
        """A model's index entry; an unknown one lists the models that exist."""
        model = index["models"].get(name)
        if not model or not model["versions"]:
            names = ", ".join(sorted(n for n, m in index["models"].items() if m["versions"])) or "(none)"
            raise RegistryError(f"registry: no model {name!r} in {self.root}; models: {names}")
        return model

    # ---------------------------------------------------------------------------------------------
    # Aliases, removal, garbage

    def set_alias(self, ref: str | Reference, alias: str) -> None:
        """Point `alias` of the referenced model at that version (moving it if set elsewhere)."""
        _check_alias(alias)
        with self._locked():
            index = self._read_index()
            manifest, _ = self._find(index, ref)
            index["models"][manifest.name]["aliases"][alias] = manifest.version
            self._write_index(index)

    def record(self, ref: str | Reference, key: str, value: Mapping[str, Any]) -> Manifest:
        """Attach results computed after publishing (e.g. an evaluation) to a version's manifest `extra`.

        The files of a version never change; its record may grow. manifest.json is rewritten before the index,
        so `verify` sees them agree once the index update (the commit point) is done.
        """
        with self._locked():
            index = self._read_index()
            manifest, _ = self._find(index, ref)
            manifest.extra = {**manifest.extra, key: _jsonable(_drop_secrets(dict(value)))}
            target = self._version_dir(manifest.name, manifest.version) / MANIFEST
            temp = target.with_name(f".{MANIFEST}.{uuid.uuid4().hex}.tmp")
            _write_durable(temp, manifest.to_json())
            os.replace(temp, target)  # never half a manifest, even on a crash
            index["models"][manifest.name]["versions"][manifest.version] = manifest.to_dict()
            self._write_index(index)
        return manifest

    def promote(
        self,
        name: str,
        metric: str,
        *,
        version: str | None = None,
        higher_is_better: bool = True,
        alias: str = "best",
        force: bool = False,
    ) -> str:
        """Give `alias` to the best version by `metric` (ties: the newest), and return that version.

        With `version`, that version gets it only if it is at least as good as the current holder,
        unless `force`. Versions lacking the metric (or with NaN) are skipped.
        """
        _check_alias(alias)
        sign = 1.0 if higher_is_better else -1.0
        with self._locked():
            index = self._read_index()
            model = self._model(index, name)
            scores = {
                v: data["metrics"][metric]
                for v, data in model["versions"].items()
                if not math.isnan(data["metrics"].get(metric, math.nan))
            }
            if version is None:
                if not scores:
                    raise RegistryError(f"registry: no version of {name} has metric {metric!r}")
                chosen = max(scores, key=lambda v: (sign * scores[v], int(v[1:])))
            else:
                chosen = self._find(index, Reference(name, version))[0].version
                if not force:
                    _check_promotion(name, metric, alias, chosen, model["aliases"].get(alias), scores, sign)
            model["aliases"][alias] = chosen
            self._write_index(index)
        return chosen

    def remove(self, ref: str | Reference, *, force: bool = False) -> None:
        """Delete a version. Refused while another version names it as parent or lora_base, unless
        `force`; its aliases go, `latest` moves to the highest remaining version."""
        with self._locked():
            index = self._read_index()
            manifest, folder = self._find(index, ref)
            children = [
                f"{name}:{version}"
                for name, model in sorted(index["models"].items())
                for version in _sorted_versions(model)
                if manifest.ref in model["versions"][version]["parents"]
                or manifest.ref in _lora_refs(model["versions"][version]["lora_base"])
            ]
            if children and not force:
                raise RegistryError(
                    f"registry: {manifest.ref} is a parent of {', '.join(children)}; remove those first or force"
                )
            model = index["models"][manifest.name]
            del model["versions"][manifest.version]
            model["aliases"] = {
                a: v for a, v in model["aliases"].items() if v != manifest.version and a != LATEST
            }
            if model["versions"]:
                model["aliases"][LATEST] = _sorted_versions(model)[-1]
            self._write_index(index)  # the commit point: from here on the directory is garbage
            shutil.rmtree(folder, ignore_errors=True)

    def gc(self) -> builtins.list[Path]:
        """Remove what crashed publishers left (staging dirs no live process holds, version dirs and
        index temp files the index does not list); return the paths removed."""
        if not self.root.is_dir():
            return []
        removed: builtins.list[Path] = []
        with self._locked():
            models = self._read_index()["models"]
            removed += [path for path in self.root.glob(".index-*.tmp") if _delete(path)]
            staging = self.root / ".staging"
            if staging.is_dir():
                removed += [path for path in staging.iterdir() if not _is_held(path) and _delete(path)]
            for folder in sorted((self.root / "models").glob("*/*")):
                if folder.name not in models.get(folder.parent.name, {}).get("versions", {}):
                    removed += [folder] if _delete(folder) else []
        return removed

    # ---------------------------------------------------------------------------------------------
    # Index and lock

    @property
    def _index_path(self) -> Path:
        return self.root / "index.json"

    def _version_dir(self, name: str, version: str) -> Path:
        return self.root / "models" / name / version

    def _read_index(self) -> dict[str, Any]:
        """The index as it was at its last commit (atomically replaced, so no lock is needed)."""
        try:
            index = json.loads(self._index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": INDEX_FORMAT, "models": {}}
        except (OSError, ValueError) as exc:
            raise RegistryError(f"registry: cannot read {self._index_path}: {_first_line(exc)}") from exc
        if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
            raise RegistryError(f"registry: {self._index_path} is not a format-{INDEX_FORMAT} registry index")
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        """Replace index.json atomically and durably: the commit point of every change."""
        temp = self.root / f".index-{uuid.uuid4().hex}.tmp"
        try:
            _write_durable(temp, json.dumps(index, indent=1, sort_keys=True))
            os.replace(temp, self._index_path)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(self.root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The registry-wide writer lock; released by the kernel if the holder dies."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RegistryError(f"registry: cannot write to {self.root}: {_first_line(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# -------------------------------------------------------------------------------------------------
# Helpers


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a config: equal configs hash equal whatever their key order."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _jsonable(value: Any) -> Any:
    """`value` as the index will store it (paths and other scalars as strings)."""
    return json.loads(json.dumps(value, default=str))


def _is_secret_key(key: str) -> bool:
    """Whether a config key names a credential: hf_token, wandb_api_key, apiKey, password, ..."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    if _SECRET_WORDS.intersection(words) or _SECRET_PAIRS.intersection(itertools.pairwise(words)):
        return True
    return words[-1] == "token" and not (len(words) > 1 and words[-2] in _SPECIAL_TOKENS)


def _drop_secrets(value: Any) -> Any:
    """A copy of `value` without the entries whose keys name credentials: none reaches the registry."""
    if isinstance(value, Mapping):
        return {k: _drop_secrets(v) for k, v in value.items() if not _is_secret_key(str(k))}
    if isinstance(value, list | tuple):
        return [_drop_secrets(item) for item in value]
    return value


def _check_dataset(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset lineage record: needs at least a name and a fingerprint."""
    if not isinstance(entry, Mapping) or not {"name", "fingerprint"} <= entry.keys():
        raise RegistryError(f"registry: bad dataset {entry!r}: expected {{'name', 'fingerprint', 'path'}}")
    return _jsonable(dict(entry))


def _check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics as floats, so that `promote` can compare them."""
    try:
        return {str(key): float(value) for key, value in metrics.items()}
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"registry: metrics must be numbers: {_first_line(exc)}") from exc


def _lora_refs(lora_base: str | None) -> list[str]:
    """The registry version a lora_base names, as `name:vN`, if it names one."""
    return [lora_base.removeprefix(REF_PREFIX)] if lora_base and is_reference(lora_base) else []


def _check_promotion(
    name: str, metric: str, alias: str, chosen: str, holder: str | None, scores: dict[str, float], sign: float
) -> None:
    """Refuse to hand `alias` to a version worse than (or not comparable with) its holder."""
    if chosen not in scores:
        raise RegistryError(
            f"registry: {name}:{chosen} has no metric {metric!r}; pass force to promote anyway"
        )
    if holder in scores and sign * scores[chosen] < sign * scores[holder]:
        raise RegistryError(
            f"registry: {name}:{chosen} has {metric}={scores[chosen]:g}, worse than {name}:{holder} "
            f"({metric}={scores[holder]:g}) which holds {alias!r}; pass force to promote anyway"
        )


def _sorted_versions(model: Mapping[str, Any]) -> list[str]:
    return sorted(model["versions"], key=lambda v: int(v[1:]))


def _code_version() -> str | None:
    """The git commit of the working directory, `+dirty` when tracked files changed: which code made it."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=30)
    return result.stdout.strip()


def _stage_file(source: Path, target: Path, rel: str, *, copy: bool) -> FileEntry:
    """Hard-link (or, when asked or across filesystems, copy) one file into staging; hash and fsync it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if copy:
            shutil.copyfile(source, target)
        else:
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        with open(target, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
            os.fsync(handle.fileno())
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise RegistryError(f"registry: cannot take {source}: {_first_line(exc)}") from exc
    return FileEntry(path=rel, size=size, sha256=digest)


def _check_version(manifest: Manifest, folder: Path, *, full: bool) -> list[str]:
    """What is wrong with a version on disk: missing or resized files always; with `full`, content
    hashes, a manifest.json that differs from the index, and files the manifest does not list."""
    problems = []
    for entry in manifest.files:
        path = folder / entry.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{manifest.ref}: {entry.path}: missing")
            continue
        if size != entry.size:
            problems.append(f"{manifest.ref}: {entry.path}: size {size}, expected {entry.size}")
        elif full and _sha256(path) != entry.sha256:
            problems.append(f"{manifest.ref}: {entry.path}: sha256 mismatch")
    if full and folder.is_dir():
        if _read_text(folder / MANIFEST) != manifest.to_json():
            problems.append(f"{manifest.ref}: {MANIFEST}: missing or differs from the index")
        listed = {entry.path for entry in manifest.files} | {MANIFEST}
        problems += [
            f"{manifest.ref}: {path.relative_to(folder).as_posix()}: not in the manifest"
            for path in sorted(folder.rglob("*"))
            if not path.is_dir() and path.relative_to(folder).as_posix() not in listed
        ]
    return problems


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _write_durable(path: Path, text: str) -> None:
    """Write and fsync, so that a commit never points at data still in the page cache."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every directory of a staged tree, so that its entries survive a power loss."""
    for folder, _, _ in os.walk(root):
        _fsync_dir(Path(folder))


def _is_held(path: Path) -> bool:
    """Whether a live process holds the flock of a staging directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _delete(path: Path) -> bool:
    """Remove a file or a tree; whether it is gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return not path.exists()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
