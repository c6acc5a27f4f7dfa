"""One exception family for everything a user can get wrong.

The CLI prints an `RlhfError` as a single line (no traceback unless `--debug`), so every message
must name the file, line or config key at fault and say what was expected.
"""

from __future__ import annotations


class RlhfError(Exception):
    """Base of all user-facing errors: the message is the whole story."""


class ConfigError(RlhfError):
    """A pipeline or stage config is malformed: unknown key, wrong type, missing field."""


class DataError(RlhfError):
    """An input data file is missing, unreadable or not in the expected shape."""


class ModelError(RlhfError):
    """A model spec cannot be resolved or loaded (unknown id offline, unsafe weights, ...)."""


class StageError(RlhfError):
    """A stage failed in a way the user can act on (diverged loss, empty dataset, ...)."""


class RegistryError(RlhfError):
    """A registry reference cannot be resolved, a version is corrupt, or an operation is refused."""


class IntegrityError(RegistryError):
    """A registry version's files differ from its manifest (missing, resized or other content): it must not load."""
