"""Preference import throughput and memory, as ratios against merely parsing the same file.

Two generated exports (stdlib generators, fixed seed, written to a temporary directory):

- trl: JSON lines in TRL's explicit-prompt text form {"prompt", "chosen", "rejected"}, 1,000,000 rows;
  one row in 200 repeats an earlier one and one in 1,000 is not JSON, so those paths are exercised too.
- labelstudio: a Label Studio JSON export (one top-level array) of 200,000 pairwise tasks with 3
  annotations each, from a pool of annotators of varying accuracy. It is written one task per line so
  that the baseline can parse it row by row; the import streams it as an array.

Baseline: read the file and `json.loads` every row, nothing else. Floor (`floor_import`): the least an import of
the same shape must do, as bare columnar Python with no accounting: parse each row (orjson), take its texts
(Label Studio: and its annotations' majority), check them (ASCII and printable: this data's common case),
hash exact and normalized duplicate keys and the split, keep the first of each, and write both splits as parquet
in the dataset's schema; it shows how far any import written in Python can go on this machine. Each (dataset, variant, repeat) runs in its
own process, so peak RSS (`ru_maxrss`) is that run's alone; the table reports medians over repeats. Peak RSS
includes the interpreter and the libraries each side imports (pyarrow is most of the import's floor);
"growth" is peak minus the process's RSS just before the work started.

    python bench/import_throughput.py                     # full size, 3 repeats
    python bench/import_throughput.py --scale 0.05 --repeats 1
    python bench/import_throughput.py --scale 0.1 --repeats 1 --compare-tree /tmp/old-checkout

`--compare-tree` also times the import of another checkout of this repository (its `rlhf` package, e.g.
`git worktree add /tmp/old-checkout HEAD~1`), alternating with this one in the same run, and prints this
import's time and peak against it: a before/after ratio under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

WORDS = (
    "the",
    "a",
    "model",
    "answer",
    "question",
    "data",
    "safety",
    "helpful",
    "reward",
    "policy",
    "train",
    "token",
    "user",
    "assistant",
    "because",
    "therefore",
    "however",
    "result",
    "example",
    "step",
    "first",
    "second",
    "finally",
    "consider",
    "explain",
    "reason",
    "value",
    "number",
    "list",
)


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def write_trl(path: Path, rows: int, seed: int = 0) -> None:
    """TRL explicit-prompt text rows, with a few duplicates and malformed lines."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        earlier: list[str] = []
        for index in range(rows):
            if index % 1000 == 999:
                handle.write('{"prompt": "cut off\n')
                continue
            if index % 200 == 199:
                handle.write(rng.choice(earlier))
                continue
            line = json.dumps(
                {
                    "prompt": f"Question {index}: {sentence(rng, 12)}",
                    "chosen": sentence(rng, rng.randint(20, 60)),
                    "rejected": sentence(rng, rng.randint(20, 60)),
                }
            )
            handle.write(line + "\n")
            if len(earlier) < 1000:
                earlier.append(line + "\n")


def write_labelstudio(path: Path, tasks: int, annotations: int, seed: int = 0) -> None:
    """A Label Studio JSON export of pairwise tasks; annotators agree with a hidden truth at varying rates."""
    rng = random.Random(seed)
    accuracy = {annotator: rng.uniform(0.55, 0.95) for annotator in range(1, 21)}
    with path.open("w", encoding="utf-8") as handle:
        handle.write("[\n")
        for task in range(tasks):
            truth = rng.choice(("left", "right"))
            results = []
            for number, annotator in enumerate(rng.sample(sorted(accuracy), annotations)):
                right = rng.random() < accuracy[annotator]
                selected = truth if right else ("right" if truth == "left" else "left")
                pairwise = {"selected": selected}
                result = [
                    {
                        "type": "pairwise",
                        "from_name": "comparison",
                        "to_name": "answer1,answer2",
                        "value": pairwise,
                    }
                ]
                annotation = {
                    "id": task * annotations + number,
                    "completed_by": annotator,
                    "result": result,
                    "was_cancelled": False,
                }
                results.append(annotation)
            data = {
                "prompt": f"Task {task}: {sentence(rng, 12)}",
                "answer1": sentence(rng, rng.randint(20, 60)),
                "answer2": sentence(rng, rng.randint(20, 60)),
            }
            record = {"id": task, "data": data, "annotations": results}
            handle.write(json.dumps(record) + (",\n" if task < tasks - 1 else "\n"))
        handle.write("]\n")


def rss_now_kib() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() // 1024


def row_bytes(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Each row of a file written one row per line (a JSON array's brackets and commas stripped)."""
    for line in lines:
        text = line.strip().rstrip(b",")
        if text not in (b"", b"[", b"]"):
            yield text


def floor_import(file: Path, out: Path) -> int:
    """The floor variant: rows read, by the least work an import of this shape does (see the module's doc)."""
    import hashlib

    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlhf.data.preference_dataset import SCHEMA

    def messages(role: str, texts: list[str]) -> pa.Array:
        structs = pa.StructArray.from_arrays(
            [pa.array([role] * len(texts)), pa.array(texts)], ["role", "content"]
        )
        return pa.ListArray.from_arrays(pa.array(range(len(texts) + 1), pa.int32()), structs)

    def key(parts: tuple[str, str, str]) -> int:
        return int.from_bytes(hashlib.blake2b("\x1d".join(parts).encode(), digest_size=8).digest())

    out.mkdir(parents=True)
    writers = {split: pq.ParquetWriter(out / f"{split}.parquet", SCHEMA) for split in ("train", "test")}
    seen: set[int] = set()
    rows, batch = 0, 4096
    with file.open("rb") as handle:
        while lines := handle.readlines(batch * 700):
            records = []
            for text in row_bytes(lines):
                rows += 1
                try:
                    records.append(orjson.loads(text))
                except orjson.JSONDecodeError:
                    continue
            if records and "data" in records[0]:  # Label Studio: the majority of each task's annotations
                texts = []
                for record in records:
                    picks = [a["result"][0]["value"]["selected"] for a in record["annotations"]]
                    data = record["data"]
                    first = picks.count("left") * 2 >= len(picks)
                    a, b = (data["answer1"], data["answer2"]) if first else (data["answer2"], data["answer1"])
                    texts.append((data["prompt"], a, b))
            else:
                texts = [(r["prompt"], r["chosen"], r["rejected"]) for r in records]
            kept = [t for t in texts if all(part.isascii() and part.isprintable() for part in t)]
            exact = [key((p, *sorted((a, b)))) for p, a, b in kept]
            normalized = [key((p.casefold(), *sorted((a.casefold(), b.casefold())))) for p, a, b in kept]
            first_seen = []
            for row, (_, norm) in enumerate(zip(exact, normalized, strict=True)):
                if norm not in seen:
                    seen.add(norm)
                    first_seen.append(kept[row])
            tests = [hashlib.sha256(p.casefold().encode()).digest()[0] < 26 for p, _, _ in first_seen]
            for split, test in (("train", False), ("test", True)):
                chosen = [row for row, is_test in zip(first_seen, tests, strict=True) if is_test == test]
                if not chosen:
                    continue
                prompts, good, bad = (list(column) for column in zip(*chosen, strict=True))
                columns = {"prompt": messages("user", prompts), "chosen": messages("assistant", good),
                           "rejected": messages("assistant", bad)}  # fmt: skip
                table = pa.table({field.name: columns.get(field.name, pa.nulls(len(prompts), field.type))
                                  for field in SCHEMA})  # fmt: skip
                writers[split].write_table(table)
    for writer in writers.values():
        writer.close()
    return rows


def worker(variant: str, file: Path, out: Path) -> dict[str, float]:
    """One timed run in this process: the baseline parse, the floor, or the import."""
    if variant == "import":
        from rlhf.data.preferences import ImportSettings, import_preferences
    if variant == "floor":  # its libraries loaded before the clock starts, as the import's are
        import orjson  # noqa: F401
        import pyarrow.parquet  # noqa: F401

        import rlhf.data.preference_dataset  # noqa: F401
    start_rss = rss_now_kib()
    start = time.perf_counter()
    if variant == "baseline":
        rows = 0
        with file.open("rb") as handle:
            for text in row_bytes(handle):
                rows += 1
                try:
                    json.loads(text)
                except ValueError:
                    continue
    elif variant == "floor":
        rows = floor_import(file, out)
    else:
        rows = import_preferences([file], out, ImportSettings()).read
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "rows": rows,
        "seconds": seconds,
        "peak_mib": peak / 1024,
        "growth_mib": (peak - start_rss) / 1024,
    }


def run_worker(variant: str, file: Path, out: Path, tree: Path | None = None) -> dict[str, float]:
    """One variant in its own process; `tree` is a checkout whose `rlhf` the import uses instead of this one's."""
    command = [sys.executable, __file__, "--worker", variant, "--file", str(file), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(tree or Path(__file__).resolve().parent.parent)}
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of the full sizes (1M rows, 200k tasks)"
    )
    parser.add_argument("--compare-tree", type=Path, help="another checkout whose import is timed too")
    parser.add_argument("--worker", choices=("baseline", "floor", "import"), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.file, args.out)))
        return

    rows, tasks = int(1_000_000 * args.scale), int(200_000 * args.scale)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {"trl": Path(tmp) / "trl.jsonl", "labelstudio": Path(tmp) / "labelstudio.json"}
        write_trl(files["trl"], rows)
        write_labelstudio(files["labelstudio"], tasks, annotations=3)
        for name, file in files.items():
            runs: dict[str, list[dict[str, float]]] = {"baseline": [], "floor": [], "import": []}
            if args.compare_tree:
                runs["compared"] = []
            for repeat in range(args.repeats):
                for variant in runs:
                    tree = args.compare_tree if variant == "compared" else None
                    worker_variant = "import" if variant == "compared" else variant
                    out = Path(tmp) / f"out-{name}-{variant}-{repeat}"
                    result = run_worker(worker_variant, file, out, tree)
                    runs[variant].append(result)
                    print(f"{name} {variant} #{repeat}: {result}", file=sys.stderr)
            median = {
                variant: {key: statistics.median(r[key] for r in results) for key in results[0]}
                for variant, results in runs.items()
            }
            table.append((name, file.stat().st_size / 2**20, median))

    print(f"\nmedian of {args.repeats} runs, each in its own process\n")
    rows = []
    for name, size, median in table:
        base, floor, imp = median["baseline"], median["floor"], median["import"]
        rows.append([name, f"{size:.0f}", f"{imp['rows']:.0f}", f"{base['rows'] / base['seconds']:,.0f}",
                     f"{floor['rows'] / floor['seconds']:,.0f}", f"{imp['rows'] / imp['seconds']:,.0f}",
                     f"{imp['seconds'] / base['seconds']:.1f}×", f"{imp['seconds'] / floor['seconds']:.1f}×",
                     f"{base['peak_mib']:.0f}", f"{imp['peak_mib']:.0f}", f"{imp['growth_mib']:.0f}",
                     f"{imp['peak_mib'] / base['peak_mib']:.1f}×"])  # fmt: skip
    print_table(["export", "MiB", "rows", "baseline rows/s", "floor rows/s", "import rows/s", "time ratio",
                 "vs floor", "baseline peak MiB",
                 "import peak MiB", "import growth MiB", "peak ratio"], rows)  # fmt: skip
    if args.compare_tree:
        print(f"\nthis import against {args.compare_tree}'s\n")
        rows = []
        for name, _, median in table:
            imp, other = median["import"], median["compared"]
            rows.append([name, f"{imp['seconds']:.2f}", f"{other['seconds']:.2f}",
                         f"{imp['seconds'] / other['seconds']:.2f}×", f"{imp['peak_mib']:.0f}",
                         f"{other['peak_mib']:.0f}", f"{imp['peak_mib'] / other['peak_mib']:.2f}×"])  # fmt: skip
        print_table(["export", "seconds", "compared seconds", "time ratio", "peak MiB", "compared peak MiB",
                     "peak ratio"], rows)  # fmt: skip


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A markdown table: the first column left-aligned, the numbers right-aligned."""
    print(f"| {' | '.join(header)} |")
    print("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print(f"| {' | '.join(row)} |")


if __name__ == "__main__":
    main()
