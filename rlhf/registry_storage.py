"""Durable, crash-safe file operations for the model registry (`rlhf.registry`).

One job: get files onto disk so that a commit never points at data a crash could lose, and tell what a
crash left behind. Staging files (hard link or copy, hash, fsync), fsync of files and directories, flocks
(the writer lock, and the one a publisher holds on its staging directory so that `gc` can tell it from a
crashed one's), deletion, and the size/hash check of a folder against its file list. Nothing here knows
of versions, aliases or lineage; those, and the commit protocol built on these pieces, are the registry's.
Only stdlib here (no torch): the registry knows nothing of training.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rlhf.errors import RegistryError


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its path relative to the version directory, size and sha256."""

    path: str
    size: int
    sha256: str


def list_files(folder: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every file under `folder`, symlinks followed, sorted by that path."""
    return sorted(
        (Path(parent, file).relative_to(folder).as_posix(), Path(parent, file))
        for parent, _, names in os.walk(folder, followlinks=True)
        for file in names
    )


def stage_file(source: Path, target: Path, rel: str, *, copy: bool) -> FileEntry:
    """Hard-link (or, when asked or across filesystems, copy) one file into staging; hash and fsync it.

    A hard link costs what a rename costs, yet the source stays whole until the commit is done.
    """
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
        raise RegistryError(f"registry: cannot take {source}: {first_line(exc)}") from exc
    return FileEntry(path=rel, size=size, sha256=digest)


def check_files(folder: Path, files: Iterable[FileEntry], *, full: bool) -> list[str]:
    """What is wrong with the listed files under `folder`, each as 'PATH: problem': missing or resized files
    always (cheap: one stat each); with `full`, content hashes too (every byte read)."""
    problems = []
    for entry in files:
        path = folder / entry.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{entry.path}: missing")
            continue
        if size != entry.size:
            problems.append(f"{entry.path}: size {size}, expected {entry.size}")
        elif full and sha256(path) != entry.sha256:
            problems.append(f"{entry.path}: sha256 mismatch")
    return problems


def unlisted_files(folder: Path, listed: set[str]) -> list[str]:
    """The relative posix paths of the files under `folder` that `listed` does not name, sorted."""
    return [
        path.relative_to(folder).as_posix()
        for path in sorted(folder.rglob("*"))
        if not path.is_dir() and path.relative_to(folder).as_posix() not in listed
    ]


def sha256(path: Path) -> str:
    """The hex sha256 of a file's content."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_text(path: Path) -> str | None:
    """A file's text, or None when it is missing or unreadable: a check reports it instead of failing."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def write_durable(path: Path, text: str) -> None:
    """Write and fsync, so that a commit never points at data still in the page cache."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that the entries just created or renamed in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every directory of a staged tree, so that its entries survive a power loss."""
    for folder, _, _ in os.walk(root):
        fsync_dir(Path(folder))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on the lock file `path` (created, with its folder, if need be); the kernel
    releases it if the holder dies, so a crash never leaves the registry locked."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RegistryError(f"registry: cannot write to {path.parent}: {first_line(exc)}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def held_directory(path: Path) -> Iterator[Path]:
    """Create the directory `path` and flock it for as long as the caller works in it (`is_held` then says
    so), then remove it; a directory no live process holds was left by a crash."""
    path.mkdir(parents=True)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # gone already if the caller renamed it away
        os.close(fd)


def is_held(path: Path) -> bool:
    """Whether a live process holds the flock of a directory (see `held_directory`)."""
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


def discard(path: Path, aside: Path) -> None:
    """Delete a tree, renamed to `aside` first (one atomic step on one filesystem), so that a crash midway
    never leaves half of it where it was; whoever cleans up `aside`'s folder finishes the job."""
    with contextlib.suppress(OSError):
        path = path.rename(aside)
    shutil.rmtree(path, ignore_errors=True)


def delete(path: Path) -> bool:
    """Remove a file or a tree; whether it is gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return not path.exists()


def first_line(exc: BaseException) -> str:
    """An exception's message on one line (or its type when it has none), for one-line RegistryErrors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
