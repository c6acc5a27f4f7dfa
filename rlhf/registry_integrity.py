"""Whether a registry version on disk is the one its manifest describes (for `rlhf.registry`).

One job: the content check that every load of a version passes and `rlhf registry verify` reports. Both hash
with `registry_storage.sha256`; a load goes through `HashCache`, so that loading a version again costs a
stat per file instead of reading every byte, while `verify` always re-hashes.

The cache (`.hashes.json` in the registry) keys each file's last computed sha256 by its path and by what a
write to it changes: size, mtime, ctime and inode. `os.utime` can put an mtime back but not a ctime, so a
byte flipped in place with the mtime restored is hashed again. An entry only ever records a hash computed
from the file: by a load, with its stat unchanged across the hashing and its last change settled (older than
`SETTLED_NS`, so that a write in the same timestamp tick cannot hide behind an equal stat), or by the publish
that wrote it into the registry's own staging folder (`remember`). What no stat
field shows (bit rot under the filesystem) only `verify` finds. The file is replaced atomically; two
writers racing may lose each other's new entries, which costs a re-hash, never a wrong answer.
Only stdlib here (no torch): the registry knows nothing of training.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from rlhf.registry_manifest import MANIFEST, Manifest
from rlhf.registry_storage import check_files, read_text, sha256, unlisted_files, write_durable

CACHE_FILE = ".hashes.json"
CACHE_TEMP_GLOB = ".hashes-*.tmp"
SETTLED_NS = 2_000_000_000
"""A file changed more recently than this is hashed but not cached (timestamps are as coarse as 1-2 s on
some filesystems)."""


class HashCache:
    """The sha256 of a registry's files as last computed (see the module docstring); `save` to keep them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / CACHE_FILE
        self.known = self._read()
        self.fresh: dict[str, dict[str, Any]] = {}

    def sha256(self, path: Path) -> str:
        """The file's sha256: the cached one while its stat is unchanged, else computed (and cached)."""
        entry = self.known.get(self._key(path))
        if entry is not None and entry["stat"] == _stat(path):
            return entry["sha256"]
        return self.compute(path)

    def compute(self, path: Path) -> str:
        """Hash the file whatever the cache holds, and remember the result if the file held still."""
        before = _stat(path)
        digest = sha256(path)
        settled = time.time_ns() - max(before[2:]) > SETTLED_NS
        if settled and _stat(path) == before:
            self.fresh[self._key(path)] = {"stat": before, "sha256": digest}
        return digest

    def remember(self, path: Path, digest: str) -> None:
        """Cache the hash the registry computed of a file it has just published. It wrote (or took over) the
        file in its own staging folder, where no one else writes, so no write can hide behind the stat and
        the settling wait is not needed: the first load of a new version stats its files, and the ranks of
        a launched stage do not each hash a model at once."""
        self.fresh[self._key(path)] = {"stat": _stat(path), "sha256": digest}

    def save(self) -> None:
        """Merge the new entries into the cache file (entries of files gone are dropped); a registry that
        cannot be written is still checked, only not cached."""
        if not self.fresh:
            return
        entries = {**self._read(), **self.fresh}
        entries = {key: entry for key, entry in entries.items() if (self.root / key).is_file()}
        temp = self.root / f".hashes-{uuid.uuid4().hex}.tmp"
        try:
            write_durable(temp, json.dumps({"format": 1, "files": entries}, sort_keys=True))
            os.replace(temp, self.path)
        except OSError:
            pass
        finally:
            temp.unlink(missing_ok=True)
        self.known, self.fresh = {**self.known, **self.fresh}, {}

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _read(self) -> dict[str, dict[str, Any]]:
        """The cache file's entries; a missing, torn or foreign one counts as empty (it only costs hashing)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            files = data["files"] if data.get("format") == 1 else {}
            return {
                key: {"stat": list(entry["stat"]), "sha256": str(entry["sha256"])}
                for key, entry in files.items()
            }
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}


def _stat(path: Path) -> list[int]:
    """What any write to a file changes: [size, inode, mtime, ctime] (nanoseconds). Not the device number:
    on a registry shared over NFS each node sees its own, while inode and times are the server's."""
    st = path.stat()
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def check_version(manifest: Manifest, folder: Path, cache: HashCache, *, full: bool) -> list[str]:
    """What is wrong with a version on disk: missing, resized or altered files (through the cache); with
    `full` (`verify`), every file re-hashed, a manifest.json that differs from the index, and files the
    manifest does not list."""
    problems = check_files(folder, manifest.files, cache.compute if full else cache.sha256)
    if full and folder.is_dir():
        if read_text(folder / MANIFEST) != manifest.to_json():
            problems.append(f"{MANIFEST}: missing or differs from the index")
        listed = {entry.path for entry in manifest.files} | {MANIFEST}
        problems += [f"{rel}: not in the manifest" for rel in unlisted_files(folder, listed)]
    return [f"{manifest.ref}: {problem}" for problem in problems]
