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
    .hashes.json            sha256 of files as last computed, keyed by stat (a cache: losing it costs hashing)
    models/<name>/<vN>/     committed files + manifest.json (a copy of the index entry)

Commit protocol (a crash at any point leaves no half version visible, and a retry succeeds):

1. Outside the lock: copy the source files into `.staging/<uuid>` (hard-link those the registry takes over,
   see `publish`), hash and fsync them.
2. Under the lock: N = 1 + max(`last_version`, every `vN` directory on disk); a directory left by a
   crashed publisher is never reused. Write manifest.json, rename staging -> models/<name>/vN, then
   replace index.json atomically (temp file + fsync + os.replace). The index update is the commit
   point: a directory the index does not list is invisible, and `gc` removes it.
3. After the commit, mode "move" deletes the source directory. Staging by hard link and deleting the
   source afterwards costs what a rename costs, yet a crash never leaves a half-moved source behind.

Every load goes through `resolve`, which checks each file's size and sha256 against the manifest (hashes
cached by stat, `rlhf.registry_integrity`) and refuses a version that differs, naming the file.

The file mechanics these steps rest on (listing a source, staging, hashing, fsync, flocks, deletion) live in
`rlhf.registry_storage`; what a version's record is and which names are valid (references, manifests, the
name and alias checks, the metadata clean-up that drops secrets) live in `rlhf.registry_manifest`; the
content check and its hash cache in `rlhf.registry_integrity`. This module decides what they are applied
to, and when.

Version numbers are never reused, not even after `remove`, so `policy:v3` always means one model.
`latest` always points at the highest version: publish and remove move it, `set_alias` refuses it.
Only stdlib here: the registry knows nothing of training.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Unpack

from rlhf import registry_storage as storage
from rlhf.errors import IntegrityError, RegistryError
from rlhf.registry_integrity import CACHE_TEMP_GLOB, HashCache, check_version
from rlhf.registry_manifest import (
    LATEST,
    MANIFEST,
    REF_PREFIX,
    Manifest,
    ModelEntry,
    PublishOptions,
    Reference,
    check_alias,
    check_dataset,
    check_metrics,
    check_name,
    clean_metadata,
    config_hash,
    is_reference,
    is_version,
    lora_refs,
)
from rlhf.registry_storage import FileEntry, SourceFile

ENV_VAR = "RLHF_REGISTRY"
DEFAULT_PATH = "registry"
INDEX_FORMAT = 1


def default_registry_path(configured: str | Path | None = None) -> Path:
    """The registry directory: an explicit argument > $RLHF_REGISTRY > ./registry.

    Pass `configured` only when the user set it explicitly (a config file's default must not beat the
    environment), so that a caller's deliberate choice always wins.
    """
    return Path(configured or os.environ.get(ENV_VAR) or DEFAULT_PATH).expanduser()


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
        mode: Literal["move", "copy"] = "move",
    ) -> Manifest:
        """Commit the files of `source_dir` as the next version of `name`; `latest` moves to it.

        mode "move" takes the files and deletes the source (a stage's output: hard links, then removal after
        the commit, so no data is copied on one filesystem); "copy" makes an independent copy and keeps the
        source. Parents and a `registry:` lora_base are resolved to concrete versions, which must exist.
        """
        check_name(name, "model name")
        if mode not in ("move", "copy"):
            raise RegistryError(f"registry: bad mode {mode!r}: expected move or copy")
        source = Path(source_dir)
        files = self._source_files(source)
        index = self._read_index()
        parent_refs = list(dict.fromkeys(self._find(index, parent)[0].ref for parent in parents))
        if lora_base is not None and is_reference(lora_base):
            lora_base = REF_PREFIX + self._find(index, lora_base)[0].ref
        clean_config = clean_metadata(config or {})
        fields: dict[str, Any] = {
            "name": name,
            "stage": stage,
            "base_model": base_model,
            "parents": parent_refs,
            "datasets": [check_dataset(entry) for entry in datasets],
            "config": clean_config,
            "config_hash": config_hash(clean_config),
            "metrics": check_metrics(metrics or {}),
            "code_version": _code_version(),
            "wandb_run_id": wandb_run_id,
            "host": socket.gethostname(),
            "lora_base": lora_base,
            "extra": clean_metadata(extra or {}),
        }
        with self._staging() as staging:
            # The registry owns its files. It hard-links only what it takes over: in mode "move" (the source
            # name is deleted after the commit) a file whose path is its content's only name (no symlink to
            # it, no second hard link). Then no name outside the registry is left to write through. Anything
            # else is copied, so a later `cp other.safetensors src/model.safetensors` changes the user's
            # file, never a version.
            entries = [
                storage.stage_file(
                    file.path, staging / file.rel, file.rel, link=mode == "move" and file.sole_name()
                )
                for file in files
            ]
            storage.fsync_tree(staging)
            manifest = self._commit(staging, fields, entries)
        if mode == "move":
            self._discard(source)  # before the hashes are cached: dropping the source's links changes ctime
        cache = HashCache(self.root)
        for entry in manifest.files:
            cache.remember(self._version_dir(name, manifest.version) / entry.path, entry.sha256)
        self._save_hashes(cache)
        return manifest

    def add(self, name: str, model_dir: str | Path, **options: Unpack[PublishOptions]) -> Manifest:
        """Register an existing HF model directory by copying it (the user's files stay theirs, to change at
        will). It must hold config.json or adapter_config.json and *.safetensors."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise RegistryError(f"registry: {model_dir} is not a directory")
        if not any((model_dir / marker).is_file() for marker in ("config.json", "adapter_config.json")):
            raise RegistryError(
                f"registry: {model_dir} has no config.json or adapter_config.json; not a HF model"
            )
        if not any(model_dir.glob("*.safetensors")):
            raise RegistryError(f"registry: {model_dir} has no *.safetensors weights")
        return self.publish(name, model_dir, mode="copy", **options)

    def _source_files(self, source: Path) -> builtins.list[SourceFile]:
        """Every file under `source`; symlinks inside it followed, any leading out refused."""
        if not source.is_dir():
            raise RegistryError(f"registry: source {source} is not a directory")
        inner, outer = source.resolve(), self.root.resolve()
        if inner.is_relative_to(outer) or outer.is_relative_to(inner):
            raise RegistryError(f"registry: source {source} overlaps the registry {self.root}")
        files = storage.list_files(source)
        if not files:
            raise RegistryError(f"registry: source {source} has no files")
        if any(file.rel == MANIFEST for file in files):
            raise RegistryError(f"registry: source {source} has a {MANIFEST}, a name the registry reserves")
        return files

    def _discard(self, source: Path) -> None:
        """Delete a moved source. Renamed into staging first (one atomic step on one filesystem), so
        that a crash midway never leaves a half-deleted source for a retry to publish; gc ends the job."""
        storage.discard(source, self.root / ".staging" / uuid.uuid4().hex)

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        """A fresh staging directory, flock-ed so that `gc` can tell it from a crashed publisher's; created
        under the registry lock, so that `gc` never sees it before its flock is taken."""
        with contextlib.ExitStack() as stack:
            with self._locked():
                path = stack.enter_context(storage.held_directory(self.root / ".staging" / uuid.uuid4().hex))
            yield path  # removed on exit: gone already once committed

    def _commit(self, staging: Path, fields: dict[str, Any], entries: builtins.list[FileEntry]) -> Manifest:
        """Step 2 of the protocol: number, rename, and the index update that makes it visible."""
        name = fields["name"]
        with self._locked():
            index = self._read_index()
            for parent in [*fields["parents"], *lora_refs(fields["lora_base"])]:
                self._find(index, parent)  # still there: a parent removed meanwhile fails the publish
            model = index["models"].setdefault(name, {"last_version": 0, "versions": {}, "aliases": {}})
            number = 1 + max([model["last_version"], *self._versions_on_disk(name)])
            created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            manifest = Manifest(**fields, version=f"v{number}", files=entries, created_at=created)
            storage.write_durable(staging / MANIFEST, manifest.to_json())
            target = self._version_dir(name, manifest.version)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, target)
            storage.fsync_dir(target.parent)
            model["last_version"] = number
            model["versions"][manifest.version] = manifest.to_dict()
            model["aliases"][LATEST] = manifest.version
            self._write_index(index)
        return manifest

    def _save_hashes(self, cache: HashCache) -> None:
        """Under the registry lock, so that `gc` never takes the cache's temp file for a crashed writer's."""
        with self._locked():
            cache.save()

    def _versions_on_disk(self, name: str) -> builtins.list[int]:
        """Numbers of the vN directories of a model, committed or not."""
        folder = self.root / "models" / name
        if not folder.is_dir():
            return []
        return [int(entry.name[1:]) for entry in folder.iterdir() if is_version(entry.name)]

    # ---------------------------------------------------------------------------------------------
    # Reading

    def resolve(self, ref: str | Reference) -> Path:
        """The directory of a version, for loading: the one way to it, so no reader skips the check. Every
        file's size and sha256 are checked against the manifest (hashes cached while a file's stat holds
        still); a missing or altered file raises an IntegrityError naming it."""
        manifest, folder = self._find(self._read_index(), ref)
        cache = HashCache(self.root)
        problems = check_version(manifest, folder, cache, full=False)
        self._save_hashes(cache)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise IntegrityError(f"registry: {problems[0]}{more}; refusing to load {manifest.ref}")
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
        entry = self.list().get(check_name(name, "model name"))
        if entry is None:
            return None
        files = {file.rel: file.path for file in self._source_files(Path(model_dir))}
        sizes = {rel: path.stat().st_size for rel, path in files.items()}
        hashes: dict[str, str] = {}  # hashed on first need, once: sizes rule out most versions

        def digest(rel: str) -> str:
            if rel not in hashes:
                hashes[rel] = storage.sha256(files[rel])
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
        entry = self.list().get(check_name(name, "model name"))
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
        parents = list(dict.fromkeys([*data["parents"], *lora_refs(data["lora_base"])]))
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
        """Re-hash one version, or every version; the problems found, empty when all is clean. The hashes
        computed refresh the cache that loads use."""
        index = self._read_index()
        cache = HashCache(self.root)
        targets = (
            [self._find(index, ref)]
            if ref is not None
            else [
                (Manifest.from_dict(model["versions"][version]), self._version_dir(name, version))
                for name, model in sorted(index["models"].items())
                for version in _sorted_versions(model)
            ]
        )
        problems = [
            problem
            for manifest, folder in targets
            for problem in check_version(manifest, folder, cache, full=True)
        ]
        self._save_hashes(cache)
        return problems

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
        check_alias(alias)
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
            manifest.extra = {**manifest.extra, key: clean_metadata(value)}
            target = self._version_dir(manifest.name, manifest.version) / MANIFEST
            temp = target.with_name(f".{MANIFEST}.{uuid.uuid4().hex}.tmp")
            storage.write_durable(temp, manifest.to_json())
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
        check_alias(alias)
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
                or manifest.ref in lora_refs(model["versions"][version]["lora_base"])
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
            leftovers = [*self.root.glob(".index-*.tmp"), *self.root.glob(CACHE_TEMP_GLOB)]
            removed += [path for path in leftovers if storage.delete(path)]
            staging = self.root / ".staging"
            if staging.is_dir():
                removed += [
                    path for path in staging.iterdir() if not storage.is_held(path) and storage.delete(path)
                ]
            for folder in sorted((self.root / "models").glob("*/*")):
                if folder.name not in models.get(folder.parent.name, {}).get("versions", {}):
                    removed += [folder] if storage.delete(folder) else []
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
            raise RegistryError(
                f"registry: cannot read {self._index_path}: {storage.first_line(exc)}"
            ) from exc
        if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
            raise RegistryError(f"registry: {self._index_path} is not a format-{INDEX_FORMAT} registry index")
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        """Replace index.json atomically and durably: the commit point of every change."""
        temp = self.root / f".index-{uuid.uuid4().hex}.tmp"
        try:
            storage.write_durable(temp, json.dumps(index, indent=1, sort_keys=True))
            os.replace(temp, self._index_path)
        finally:
            temp.unlink(missing_ok=True)
        storage.fsync_dir(self.root)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """The registry-wide writer lock; released by the kernel if the holder dies."""
        return storage.locked(self.root / ".lock")


# -------------------------------------------------------------------------------------------------
# Helpers


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
