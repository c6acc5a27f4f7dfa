"""A training step beside a competing process: all threads (libgomp's spin-wait), passive waits, and the
threads `rlhf` picks by the cores left free (`rlhf.cpu_threads.stage_threads`).

    python bench/cpu_contention.py                          # tiny-llama, 2 threads asked for, 3 repeats
    python bench/cpu_contention.py --model small-llama --steps 10

The workload is the quickstart's kind of step: forward and backward of a built-in random-init Llama on a batch
of 32 sequences of 64 tokens, then an AdamW step, `--steps` times (the median of steps 2..N is reported). On a
model this small every op is short, so the threads meet at a barrier thousands of times per step: where
libgomp's threads spin, a second busy process takes the core a waiting thread needs, and the step stalls.

Settings, each x {quiet, one competitor}, each run in its own process (libgomp reads its wait settings once,
when torch loads it), in alternating order within each repeat:
- `all threads`: `--threads` threads, libgomp's default wait (before `rlhf.cpu_threads`);
- `passive`: the same with `OMP_WAIT_POLICY=PASSIVE` (threads sleep at once);
- `free cores`: what a stage now does, `--threads` at most, fewer where other processes keep cores busy.
The competitor is the same workload on `--threads` threads in a process of its own (`--competitor torch`) or a
single-threaded Python busy loop (`--competitor busy`), started before the timed process and killed after it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# setting -> (extra environment, threads picked by the free cores)
SETTINGS: dict[str, tuple[dict[str, str], bool]] = {
    "all threads": ({}, False),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "free cores": ({}, True),
}


def train_steps(model_name: str, steps: int, threads: int, by_free_cores: bool) -> dict[str, object]:
    """Seconds per training step of `model_name` and the threads it ran (in a worker process)."""
    import torch

    from rlhf.builtin_models import build_builtin_model
    from rlhf.cpu_threads import stage_threads

    torch.set_num_threads(stage_threads(threads, "bench") if by_free_cores else threads)
    model, _ = build_builtin_model(model_name)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, model.config.vocab_size, (32, 64), generator=generator)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return {"seconds": times, "threads": torch.get_num_threads()}


def worker(args: argparse.Namespace, steps: int, by_free_cores: bool) -> list[str]:
    command = [sys.executable, __file__, "--worker", "--model", args.model, "--steps", str(steps),
               "--threads", str(args.threads)]  # fmt: skip
    return command + (["--free-cores"] if by_free_cores else [])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | extra


def start_competitor(args: argparse.Namespace) -> subprocess.Popen:
    if args.competitor == "busy":
        command = [sys.executable, "-c", "while True: pass"]
    else:
        command = worker(args, 100_000, False)
    process = subprocess.Popen(command, env=clean_env({}), cwd=REPO, stdout=subprocess.DEVNULL)
    time.sleep(3 if args.competitor == "torch" else 0.5)  # past its imports, into its busy loop
    return process


def timed_run(args: argparse.Namespace, setting: str, competed: bool) -> tuple[float, int]:
    """The median step time (steps 2..N) of one worker under `setting`, alone or beside a competitor, and its
    thread count."""
    env, by_free_cores = SETTINGS[setting]
    competitor = start_competitor(args) if competed else None
    try:
        out = subprocess.run(worker(args, args.steps, by_free_cores), env=clean_env(env), cwd=REPO,
                             check=True, capture_output=True, text=True).stdout  # fmt: skip
    finally:
        if competitor:
            competitor.kill()
            competitor.wait()
    result = json.loads(out.splitlines()[-1])
    return statistics.median(result["seconds"][1:]), result["threads"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--competitor", choices=("torch", "busy"), default="torch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--free-cores", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(train_steps(args.model, args.steps, args.threads, args.free_cores)))
        return
    runs = [(setting, competed) for competed in (False, True) for setting in SETTINGS]
    times: dict[tuple[str, bool], list[float]] = {run: [] for run in runs}
    threads: dict[tuple[str, bool], list[int]] = {run: [] for run in runs}
    for repeat in range(args.repeats):
        for setting, competed in runs if repeat % 2 == 0 else runs[::-1]:
            seconds, used = timed_run(args, setting, competed)
            times[setting, competed].append(seconds)
            threads[setting, competed].append(used)
    median = {run: statistics.median(t) for run, t in times.items()}
    print(
        f"{args.model}, {args.threads} threads asked for, competitor: {args.competitor}, median of {args.repeats}"
    )
    print(
        "| setting | s / step quiet | threads | beside a competitor | threads | slowdown | vs all threads |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for setting in SETTINGS:
        quiet, loaded = median[setting, False], median[setting, True]
        print(f"| {setting} | {quiet:.4f} | {threads[setting, False]} | {loaded:.4f} | {threads[setting, True]} | "
              f"{loaded / quiet:.1f}x | {median['all threads', True] / loaded:.2f}x faster |")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({f"{s}-{'competed' if c else 'quiet'}": t for (s, c), t in times.items()})
        )


if __name__ == "__main__":
    main()
