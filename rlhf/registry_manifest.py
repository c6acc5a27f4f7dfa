"""What a model registry version's record is, and which names are valid (for `rlhf.registry`).

One job: the registry's records and names. References (`registry:NAME:SEL`) and the checks that keep a
model name, version or alias from escaping the registry folder; the manifest of a version, the listing
entry of a model and the options a publish records; and the clean-up that makes metadata fit to store
(credentials dropped, values JSON-ready, datasets and metrics checked, configs hashed). Nothing here
touches the disk or the index; where records live and how they are committed is the registry's.
Only stdlib here (no torch): the registry knows nothing of training.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

from rlhf.errors import RegistryError
from rlhf.registry_storage import FileEntry, first_line

REF_PREFIX = "registry:"
LATEST = "latest"
MANIFEST = "manifest.json"
"""The file in each version directory that repeats its index entry."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^v[1-9][0-9]*$")
_VERSION_LIKE = re.compile(r"^v[0-9]+$")
_SECRET_WORDS = frozenset(
    {"secret", "password", "passwd", "passphrase", "credential", "credentials", "apikey"}
)
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key")})
_SPECIAL_TOKENS = frozenset({"pad", "bos", "eos", "unk", "sep", "cls", "mask"})
"""`pad_token` and friends name a tokenizer's special token, not a credential."""


def is_reference(text: str) -> bool:
    """Whether a model spec points into the registry (as opposed to a HF id or a directory)."""
    return text.startswith(REF_PREFIX)


def is_version(text: str) -> bool:
    """Whether `text` is a version name (`v1`, `v2`, ...) rather than an alias."""
    return bool(_VERSION.match(text))


def check_name(text: str, what: str) -> str:
    """A model name or alias that cannot escape the registry folder."""
    if not _NAME.match(text):
        raise RegistryError(f"registry: bad {what} {text!r}: expected [a-z0-9][a-z0-9._-]{{0,63}}")
    return text


def check_alias(alias: str) -> str:
    """An alias a user may set: valid, not version-like, and not the managed `latest`."""
    check_name(alias, "alias")
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
        check_name(self.name, "model name")
        if _VERSION_LIKE.match(self.selector) and not is_version(self.selector):
            raise RegistryError(f"registry: bad version {self.selector!r}: expected v1, v2, ...")
        check_name(self.selector, "version or alias")

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
        return is_version(self.selector)

    def __str__(self) -> str:
        return f"{self.name}:{self.selector}"


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


def lora_refs(lora_base: str | None) -> list[str]:
    """The registry version a lora_base names, as `name:vN`, if it names one."""
    return [lora_base.removeprefix(REF_PREFIX)] if lora_base and is_reference(lora_base) else []


# -------------------------------------------------------------------------------------------------
# Metadata clean-up: what a manifest may hold


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a config: equal configs hash equal whatever their key order."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def clean_metadata(value: Mapping[str, Any]) -> dict[str, Any]:
    """A config, `extra` or recorded result as a manifest stores it: credentials dropped, JSON-ready."""
    return _jsonable(_drop_secrets(dict(value)))


def check_dataset(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset lineage record: needs at least a name and a fingerprint."""
    if not isinstance(entry, Mapping) or not {"name", "fingerprint"} <= entry.keys():
        raise RegistryError(f"registry: bad dataset {entry!r}: expected {{'name', 'fingerprint', 'path'}}")
    return _jsonable(dict(entry))


def check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics as floats, so that `promote` can compare them."""
    try:
        return {str(key): float(value) for key, value in metrics.items()}
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"registry: metrics must be numbers: {first_line(exc)}") from exc


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
