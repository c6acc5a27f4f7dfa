"""Durable, crash-safe file operations for the model registry (`rlhf.registry`).

One job: get files onto disk so that a commit never points at data a crash could lose, and tell what a
crash left behind. Listing a source (no symlink may lead out of it), staging files (hard link or copy, hash,
fsync), fsync of files and directories, flocks (the writer lock, and the one a publisher holds on its staging
directory so that `gc` can tell it from a crashed one's), deletion, and the size/hash check of a folder
against its file list. Nothing here knows of versions, aliases or lineage; those, and the commit protocol
built on these pieces, are the registry's. Only stdlib here (no torch): the registry knows nothing of training.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rlhf.errors import RegistryError


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its path relative to the version directory, size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SourceFile:
    """A file to publish: its path relative to the source directory, where its content is, and whether it
    was reached through a symlink (its content then has a name outside the registry's control)."""

    rel: str
    path: Path
    through_link: bool

    def sole_name(self) -> bool:
        """Whether this path is the content's only name: reached directly, and no other hard link to it."""
        return not self.through_link and self.path.stat().st_nlink == 1


def list_files(folder: Path) -> list[SourceFile]:
    """Every regular file under `folder`, sorted by relative path. A symlink that stays inside `folder` is
    followed (its content is taken, a directory walked); one that leaves it, dangles or loops is refused in
    one line naming the link and its target, so nothing outside the source ever reaches the registry."""
    root = Path(os.path.realpath(folder))
    files: list[SourceFile] = []

    def walk(directory: Path, rel: PurePosixPath, ancestors: frozenset[Path], through_link: bool) -> None:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            path, name = Path(entry.path), rel / entry.name
            real = _inside_target(path, root, folder) if entry.is_symlink() else path
            linked = through_link or entry.is_symlink()
            if real.is_dir():
                resolved = Path(os.path.realpath(real))
                if resolved in ancestors:
                    raise RegistryError(
                        f"registry: symlink {path} -> {os.readlink(path)} loops back to {resolved}"
                    )
                walk(path, name, ancestors | {resolved}, linked)
            elif real.is_file():
                files.append(SourceFile(name.as_posix(), real, linked))
            else:
                raise RegistryError(f"registry: {path} is not a regular file or directory")

    walk(folder, PurePosixPath(), frozenset({root}), False)
    return sorted(files, key=lambda file: file.rel)


def _inside_target(link: Path, root: Path, folder: Path) -> Path:
    """Where a symlink under `folder` ends (`root` is its real path); refused if that is outside or nowhere."""
    target = os.readlink(link)
    try:
        real = Path(os.path.realpath(link, strict=True))
    except OSError as exc:
        raise RegistryError(
            f"registry: symlink {link} -> {target}: {exc.strerror or first_line(exc)}"
        ) from None
    if not real.is_relative_to(root):
        raise RegistryError(f"registry: symlink {link} -> {target} leaves {folder}; copy the file in instead")
    return real


def stage_file(source: Path, target: Path, rel: str, *, link: bool) -> FileEntry:
    """Hard-link (when asked and on one filesystem) or copy one file into staging; hash and fsync it.

    A hard link costs what a rename costs; the caller asks for one only for a file the registry takes over.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if link:
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        else:
            shutil.copyfile(source, target)
        digest = sha256(target)
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise RegistryError(f"registry: cannot take {source}: {first_line(exc)}") from exc
    return FileEntry(path=rel, size=size, sha256=digest)


def check_files(folder: Path, files: Iterable[FileEntry], digest: Callable[[Path], str]) -> list[str]:
    """What is wrong with the listed files under `folder`, each as 'PATH: problem': missing, resized, or a
    content hash (`digest`: `sha256`, or a cache in front of it) other than the listed one."""
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
        elif digest(path) != entry.sha256:
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
    """The hex sha256 of a file's content: the one hash function of every check, cached or not."""
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
