"""What it costs that the registry owns its files: `registry add` copying a model against hard-linking it.

A 1 GiB model directory (config.json and two 512 MiB safetensors-like files of random bytes, in a temporary
directory on the disk the registry uses) is registered, in a fresh registry each time:

- copy: `Registry.add`, as it is now (copy, hash, fsync each file; commit).
- hard link: the path the old `add` took, and a stage's output still takes (`publish` in mode "move" of a
  directory whose files have one name each: hard link, hash, fsync; commit). Its source is a fresh copy made
  before the clock starts.

Besides time, "new disk" is the space the version takes that the source did not already take (blocks of the
version's inodes that are not the source's). Then the loads: the first `resolve` after the add stats the
files (the publish cached the hashes it computed); one with the cache deleted hashes every file. Variants are interleaved,
in one process; the table gives medians over repeats. It is IO-bound: run it on an otherwise idle disk.

    python bench/registry_add.py                  # 2 x 512 MiB, 3 repeats
    python bench/registry_add.py --mib 64 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rlhf.registry import Registry
from rlhf.registry_integrity import CACHE_FILE

SHARDS = 2


def write_model(folder: Path, mib: int) -> Path:
    """config.json and SHARDS safetensors-like files (an 8-byte header length, a JSON header, random bytes)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    for shard in range(SHARDS):
        header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
        with open(folder / f"model-{shard + 1:05d}-of-{SHARDS:05d}.safetensors", "wb") as handle:
            handle.write(struct.pack("<Q", len(header)) + header)
            for _ in range(mib):
                handle.write(os.urandom(1 << 20))
    return folder


def inodes(folder: Path) -> set[tuple[int, int]]:
    return {(p.stat().st_dev, p.stat().st_ino) for p in folder.rglob("*") if p.is_file()}


def new_disk(version: Path, before: set[tuple[int, int]]) -> int:
    """Bytes allocated to the version's files that the source's files did not already hold."""
    return sum(
        p.stat().st_blocks * 512
        for p in version.rglob("*")
        if p.is_file() and (p.stat().st_dev, p.stat().st_ino) not in before
    )


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def one_run(variant: str, source: Path, scratch: Path, repeat: int) -> dict[str, float]:
    reg = Registry(scratch / f"registry-{variant}-{repeat}")
    if variant == "hard link":
        taken = scratch / f"output-{repeat}"
        shutil.copytree(source, taken)  # a stage's fresh output: each file its content's only name
        before = inodes(taken)
        seconds = timed(lambda: reg.publish("m", taken, mode="move"))
    else:
        before = inodes(source)
        seconds = timed(lambda: reg.add("m", source))
    row = {"add_s": seconds, "new_disk": new_disk(reg.root / "models" / "m" / "v1", before)}
    row["cached_load_s"] = timed(lambda: reg.resolve("m:v1"))  # hashes cached by the publish: stats
    (reg.root / CACHE_FILE).unlink()
    row["uncached_load_s"] = timed(lambda: reg.resolve("m:v1"))  # every file hashed (it raises unless whole)
    shutil.rmtree(reg.root)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=512, help="size of each of the two weight files")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", help="where the temporary files go (default: the system's temp directory)")
    args = parser.parse_args()
    variants = ["hard link", "copy"]
    rows: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="registry-add-bench-") as scratch:
        source = write_model(Path(scratch) / "model", args.mib)
        total = sum(p.stat().st_size for p in source.iterdir())
        print(f"model: {total / 2**30:.2f} GiB in {SHARDS + 1} files, {args.repeats} repeat(s), {scratch}")
        for repeat in range(args.repeats):
            for variant in variants:
                rows[variant].append(one_run(variant, source, Path(scratch), repeat))
    base = statistics.median(row["add_s"] for row in rows["hard link"])
    print("\n| add by | add (s) | vs hard link | new disk | load (s) | load without the cache (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for variant in variants:
        median = {key: statistics.median(row[key] for row in rows[variant]) for key in rows[variant][0]}
        print(f"| {variant} | {median['add_s']:.2f} | {median['add_s'] / base:.2f}x | "
              f"{median['new_disk'] / 2**20:,.0f} MiB | {median['cached_load_s']:.4f} | "
              f"{median['uncached_load_s']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
