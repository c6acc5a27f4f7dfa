"""Registry integrity: a corrupted version never loads, by any path; the hash cache that keeps loads cheap;
and sources whose symlinks would carry outside files into a version."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from rlhf.errors import IntegrityError, RegistryError
from rlhf.model_sizes import Shapes
from rlhf.models import registry_model
from rlhf.registry import Registry
from rlhf.registry_integrity import CACHE_FILE, SETTLED_NS
from rlhf.settings import ModelSpec
from rlhf.workspace import resolve_model
from tests.conftest import run_cli as cli
from tests.test_registry import model_dir, one_line_error


def flip_byte(path: Path, offset: int) -> None:
    """Flip one byte in place (same size) and put the mtime back, as a cache keyed on size and mtime would miss."""
    before = path.stat()
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def settle() -> None:
    """Wait until files just written are old enough for their hashes to be cached."""
    time.sleep(SETTLED_NS / 1e9 + 0.2)


def bytes_read() -> int:
    """Bytes this process has passed through read() so far, page cache included (Linux)."""
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("needs /proc/self/io")
    return int(next(line for line in io.read_text().splitlines() if line.startswith("rchar:")).split()[1])


def test_a_flipped_byte_is_refused_by_every_load(tiny_llama_dir: Path, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.add("m", shutil.copytree(tiny_llama_dir, tmp_path / "src"))
    settle()
    folder = reg.resolve("m:v1")  # loaded once: its hashes are cached
    weights = folder / "model.safetensors"
    flip_byte(weights, weights.stat().st_size - 4)  # a weight's low mantissa byte: it would load and run
    records = [(folder / "manifest.json").read_text(), (reg.root / "index.json").read_text()]

    with pytest.raises(IntegrityError, match=r"m:v1: model.safetensors: sha256 mismatch") as excinfo:
        reg.resolve("m:latest")
    one_line_error(excinfo)
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        registry_model(reg, ModelSpec(name="registry:m:v1"))
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):  # how a stage resolves its model
        resolve_model(ModelSpec(name="registry:m:v1"), tmp_path / "run", 0, reg)
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):  # `rlhf plan` reading its config
        Shapes(reg.root).of("registry:m:v1", "model")

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "2 + 2 ="}) + "\n")
    registry, out = ["--registry", str(reg.root)], tmp_path / "out"
    commands = [
        ["eval", "registry:m:v1", "--reference", "registry:m:v1", "--prompts", str(prompts), "--tracking", "none",
         "--samples-per-prompt", "1", "--max-new-tokens", "2", "--run-dir", str(tmp_path / "eval"), *registry],
        ["data", "export-for-annotation", "--prompts", str(prompts), "--model", "registry:m:v1", "--out",
         str(out / "tasks.json"), "--max-new-tokens", "2", *registry],
        ["registry", "export", "m:v1", "--to", str(out / "export"), *registry],
    ]  # fmt: skip
    for command in commands:
        done = cli(*command)
        assert done.returncode == 2, (command, done.stderr[-2000:])
        assert "model.safetensors: sha256 mismatch" in done.stderr.strip().splitlines()[-1]
    assert not out.exists()
    assert [(folder / "manifest.json").read_text(), (reg.root / "index.json").read_text()] == records


def test_a_second_load_reads_no_weights_and_a_touched_file_is_hashed_again(
    reg: Registry, tmp_path: Path
) -> None:
    size = 4 << 20
    reg.add("m", model_dir(tmp_path / "src", size=size))
    weights = reg.root / "models" / "m" / "v1" / "model.safetensors"
    settle()

    def read_by_resolve() -> int:
        start = bytes_read()
        reg.resolve("m:v1")
        return bytes_read() - start

    cache = json.loads((reg.root / CACHE_FILE).read_text())["files"]
    (listed,) = [entry for entry in reg.manifest("m:v1").files if entry.path == "model.safetensors"]
    assert cache["models/m/v1/model.safetensors"]["sha256"] == listed.sha256  # cached as it was published
    assert read_by_resolve() < size // 4  # so even the first load only stats the files
    (reg.root / CACHE_FILE).unlink()
    assert read_by_resolve() >= size  # without the cache a load hashes every file
    assert read_by_resolve() < size // 4  # and the next one stats them
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert read_by_resolve() >= size  # touched: hashed again (and still intact)
    (reg.root / CACHE_FILE).write_text("{torn")
    assert read_by_resolve() >= size  # a torn cache only costs hashing

    flip_byte(weights, 0)
    settle()
    with pytest.raises(IntegrityError):
        reg.resolve("m:v1")
    with pytest.raises(IntegrityError):
        reg.resolve("m:v1")  # the cache holds the hash computed, never the manifest's
    for key, entry in json.loads((reg.root / CACHE_FILE).read_text())["files"].items():
        assert entry["sha256"] == hashlib.sha256((reg.root / key).read_bytes()).hexdigest()


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def outside_targets(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "outside-dir").mkdir()
    (tmp_path / "outside.txt").write_text("not the model's")
    return {
        "hostname": Path("/etc/hostname"),
        "file": tmp_path / "outside.txt",
        "dir": tmp_path / "outside-dir",
    }


@pytest.mark.parametrize("kind", ["hostname", "file", "dir"])
def test_a_symlink_leaving_the_source_is_refused_naming_link_and_target(
    reg: Registry, tmp_path: Path, kind: str
) -> None:
    target = outside_targets(tmp_path)[kind]
    if not target.exists():
        pytest.skip(f"{target} does not exist here")
    source = model_dir(tmp_path / "src")
    (source / "sub").mkdir()
    link = source / "sub" / "hostname_link"
    link.symlink_to(target)
    with pytest.raises(RegistryError, match="leaves") as excinfo:
        reg.add("m", source)
    assert f"{link} -> {target}" in one_line_error(excinfo)
    assert reg.list() == {} and list(reg.root.glob(".staging/*")) == []


def test_symlinks_inside_the_source_are_stored_as_their_content(reg: Registry, tmp_path: Path) -> None:
    source = model_dir(tmp_path / "src")
    (source / "shards").mkdir()
    (source / "shards" / "part.bin").write_bytes(b"shard" * 100)
    (source / "weights-link.safetensors").symlink_to("model.safetensors")
    (source / "shards-link").symlink_to("shards", target_is_directory=True)
    (source / "shards" / "config-link.json").symlink_to(source / "config.json")  # absolute, still inside

    manifest = reg.add("m", source)
    folder = reg.resolve("m:v1")
    expected = {
        "config.json": "config.json",
        "model.safetensors": "model.safetensors",
        "shards/config-link.json": "config.json",
        "shards/part.bin": "shards/part.bin",
        "shards-link/config-link.json": "config.json",
        "shards-link/part.bin": "shards/part.bin",
        "tokenizer.json": "tokenizer.json",
        "weights-link.safetensors": "model.safetensors",
    }
    assert [entry.path for entry in manifest.files] == sorted(expected)
    for stored, original in expected.items():
        path = folder / stored
        assert not path.is_symlink() and path.read_bytes() == (source / original).read_bytes()
        assert path.stat().st_nlink == 1  # copied: the source's names cannot reach it
    assert not any(path.is_symlink() for path in folder.rglob("*"))


@pytest.mark.parametrize("loop", ["pair", "parent"])
def test_a_symlink_loop_ends_with_one_short_line(reg: Registry, tmp_path: Path, loop: str) -> None:
    source = model_dir(tmp_path / "src")
    if loop == "pair":
        (source / "a").symlink_to("b")
        (source / "b").symlink_to("a")
        link, target = source / "a", "b"
    else:
        (source / "sub").mkdir()
        link, target = source / "sub" / "up", ".."
        link.symlink_to(target, target_is_directory=True)
    with pytest.raises(RegistryError) as excinfo:
        reg.add("m", source)
    message = one_line_error(excinfo)
    assert f"symlink {link} -> {target}" in message and len(message) < 300
    assert reg.list() == {}


def test_a_dangling_symlink_is_refused(reg: Registry, tmp_path: Path) -> None:
    source = model_dir(tmp_path / "src")
    (source / "gone.safetensors").symlink_to("nothing-here")
    with pytest.raises(RegistryError, match=r"gone.safetensors -> nothing-here: No such file"):
        reg.add("m", source)
