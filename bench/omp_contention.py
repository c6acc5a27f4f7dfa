"""A training step under a competing process: OpenMP's default spin-wait against `OMP_WAIT_POLICY=PASSIVE`.

    python bench/omp_contention.py                          # tiny-llama, 2 threads, 3 repeats
    python bench/omp_contention.py --model small-llama --steps 10

The workload is the quickstart's kind of step: forward and backward of a built-in random-init Llama on a batch
of 32 sequences of 64 tokens, then an AdamW step, `--steps` times (the first is warm-up). On a model this small
every op is short, so the threads meet at a barrier thousands of times per step: where libgomp's default
wait spins, a second busy process takes the core a spinning thread waits on, and the step stalls.

Four settings, each in its own process (libgomp reads its wait policy once, when torch loads it), in
alternating order within each repeat: {default, passive} x {quiet, one competitor}. The competitor is the
same workload in a process of its own (`--competitor torch`, with libgomp's default wait) or a
single-threaded Python busy loop (`--competitor busy`); it is started before the timed process and killed
after it. The table shows the median step time per setting over repeats and each policy's slowdown under
the competitor; `rlhf` sets PASSIVE for every stage it starts (`rlhf.cpu_threads`).
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
POLICIES = {"default": None, "passive": "PASSIVE"}


def train_steps(model_name: str, steps: int, threads: int) -> list[float]:
    """Seconds per training step of `model_name` (runs in a worker process)."""
    import torch

    from rlhf.builtin_models import build_builtin_model

    torch.set_num_threads(threads)
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
    return times


def worker_env(policy: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    return env


def start_competitor(kind: str, model_name: str, threads: int) -> subprocess.Popen:
    if kind == "busy":
        command = [sys.executable, "-c", "while True: pass"]
    else:
        command = [sys.executable, __file__, "--worker", "--model", model_name, "--steps", "100000",
                   "--threads", str(threads)]  # fmt: skip
    process = subprocess.Popen(command, env=worker_env(None), cwd=REPO, stdout=subprocess.DEVNULL)
    time.sleep(3 if kind == "torch" else 0.5)  # past its imports, into its busy loop
    return process


def timed_run(args: argparse.Namespace, policy: str, competed: bool) -> float:
    """The median step time (steps 2..N) of one worker process under `policy`, alone or beside a competitor."""
    competitor = start_competitor(args.competitor, args.model, args.threads) if competed else None
    command = [sys.executable, __file__, "--worker", "--model", args.model, "--steps", str(args.steps),
               "--threads", str(args.threads)]  # fmt: skip
    try:
        out = subprocess.run(
            command,
            env=worker_env(POLICIES[policy]),
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        if competitor:
            competitor.kill()
            competitor.wait()
    return statistics.median(json.loads(out.splitlines()[-1])[1:])


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
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(train_steps(args.model, args.steps, args.threads)))
        return
    settings = [(policy, competed) for competed in (False, True) for policy in POLICIES]
    times: dict[tuple[str, bool], list[float]] = {s: [] for s in settings}
    for repeat in range(args.repeats):
        order = settings if repeat % 2 == 0 else settings[::-1]
        for policy, competed in order:
            times[policy, competed].append(timed_run(args, policy, competed))
    median = {s: statistics.median(t) for s, t in times.items()}
    print(f"{args.model}, {args.threads} threads, competitor: {args.competitor}, median of {args.repeats}")
    print("| OMP_WAIT_POLICY | s / step quiet | s / step with a competitor | slowdown |")
    print("|---|---:|---:|---:|")
    for policy in POLICIES:
        quiet, loaded = median[policy, False], median[policy, True]
        print(f"| {policy} | {quiet:.4f} | {loaded:.4f} | {loaded / quiet:.1f}x |")
    passive_gain = median["default", True] / median["passive", True]
    print(f"with a competitor, passive is {passive_gain:.1f}x faster than default; "
          f"quiet, passive / default = {median['passive', False] / median['default', False]:.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({f"{p}-{'competed' if c else 'quiet'}": t for (p, c), t in times.items()})
        )


if __name__ == "__main__":
    main()
