"""The quickstart's wall time, as a new user runs it: `rlhf run configs/quickstart.yaml`, fresh registry each run.

    python bench/quickstart_time.py                  # 3 runs
    python bench/quickstart_time.py --runs 1 -- stages.sft.num_threads=1     # overrides after --

Each run is the CLI in a process of its own, in a new temporary directory (its registry, runs and wandb
offline files), so nothing is cached from an earlier run; the wall time counts from the process's start to its
exit (the interpreter and library imports included). The table shows the median wall time, each stage's own
seconds (from the run's summary.json) and the gold reward of every model: the SFT stage's own evaluation and
each policy's in the closing evaluation, which must stay within 0.02 of the earlier figures when the quickstart
is made faster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RLHF = Path(sys.executable).with_name("rlhf")


def one_run(overrides: list[str]) -> dict[str, Any]:
    """Wall seconds, each stage's seconds and each model's gold reward of one quickstart in a fresh directory."""
    with tempfile.TemporaryDirectory(prefix="quickstart-time-") as tmp:
        command = [str(RLHF), "run", str(REPO / "configs" / "quickstart.yaml"), f"registry={tmp}/registry",
                   f"runs_dir={tmp}/runs", *overrides]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(
            command, cwd=tmp, capture_output=True, text=True, env=os.environ | {"WANDB_MODE": "offline"}
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-6000:])
            raise SystemExit(f"the quickstart failed (exit {done.returncode})")
        run_dir = next(Path(tmp, "runs").glob("*/summary.json")).parent
        summary = json.loads((run_dir / "summary.json").read_text())
        loops = {s["stage"]: loop_seconds(run_dir / s["stage"] / "history.json") for s in summary["stages"]}
    gold = {
        s["stage"]: s["metrics"]["gold_reward"] for s in summary["stages"] if "gold_reward" in s["metrics"]
    }
    gold |= {
        name: m["policy_gold_reward"]
        for name, m in summary["evaluations"].items()
        if "policy_gold_reward" in m
    }
    stage_s = {s["stage"]: s["seconds"] for s in summary["stages"]}
    return {"wall_s": wall, "stage_s": stage_s, "loop_s": loops, "gold": gold}


def loop_seconds(history: Path) -> float:
    """A stage's seconds inside its training loop: TRL's `train_runtime`, or the sum of PPO's per-update
    generation, scoring, training and weight-sync times (the floor no set-up, I/O or evaluation work adds to)."""
    entries = json.loads(history.read_text())
    runtime = [entry["train_runtime"] for entry in entries if "train_runtime" in entry]
    if runtime:
        return runtime[-1]
    parts = ("generation_s", "scoring_s", "training_s", "weight_sync_s")
    return sum(entry.get(part, 0.0) for entry in entries for part in parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides (after --)")
    args = parser.parse_args()
    runs = []
    for index in range(args.runs):
        runs.append(one_run(args.overrides))
        print(f"run {index + 1}: {runs[-1]['wall_s']:.1f} s, gold {runs[-1]['gold']}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    walls = [r["wall_s"] for r in runs]
    per_run = ", ".join(f"{wall:.1f}" for wall in walls)
    print(
        f"quickstart, {args.runs} runs, median wall time {statistics.median(walls):.1f} s (per run: {per_run})"
    )
    print("| stage | s (median) | of which in the training loop | gold reward (median) |")
    print("|---|---:|---:|---:|")
    for stage in runs[0]["stage_s"]:
        seconds = statistics.median(r["stage_s"][stage] for r in runs)
        loop = statistics.median(r["loop_s"][stage] for r in runs)
        gold = [r["gold"][stage] for r in runs if stage in r["gold"]]
        print(
            f"| {stage} | {seconds:.1f} | {loop:.1f} | {statistics.median(gold) if gold else float('nan'):.3f} |"
        )
    loops = statistics.median(sum(r["loop_s"].values()) for r in runs)
    print(f"the training loops alone: {loops:.1f} s of the {statistics.median(walls):.1f} s")


if __name__ == "__main__":
    main()
