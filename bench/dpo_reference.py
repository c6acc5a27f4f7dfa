"""DPO with precomputed reference log-probs against TRL's default (a reference forward at every step).

    python bench/dpo_reference.py                          # small-llama (40M), 640 pairs, 4 epochs, 3 repeats
    python bench/dpo_reference.py --model tiny-llama --pairs 0    # the quickstart's own DPO stage, every pair

The quickstart's DPO stage (`configs/quickstart.yaml`, stages.policy.dpo: apo_zero, beta 0.3, lr 5e-4, batch
32, max_length 64, its epochs) on the quickstart's imported preference data, started from the random-init
built-in `--model` (the loss curves compare the same start either way; nothing is sampled). `--pairs N` keeps
the first N training pairs (0: all), so that a 40M run takes minutes. Each (side, repeat) runs in its own
process with its own datasets cache (TRL caches precomputed log-probs there, and a warm cache would skip the
pass being measured), the sides alternating.

Timed: building the trainer (where TRL precomputes the train and eval splits' reference log-probs) plus
`train()`, including its evaluations (`eval_on_start` and each epoch's end). `epoch` is the median wall time
of epochs 2..N from the trainer's epoch ends. The loss curve is logged at every step; the table gives the
largest step-wise difference between the sides' curves (repeat 1 of each, same seed).
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

import yaml

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SIDES = {"precomputed": True, "every step": False}


def bench_config(model: str, epochs: int | None, precompute: bool, runs_dir: Path) -> dict[str, Any]:
    """The quickstart's data and DPO section as a one-stage pipeline on `model`, logging every step."""
    quickstart = yaml.safe_load(QUICKSTART.read_text())
    dpo = quickstart["stages"]["policy"]["dpo"] | {
        "precompute_ref_log_probs": precompute,
        "logging_steps": 1,
        "save_steps": 100_000,
    }
    if epochs:
        dpo["num_train_epochs"] = epochs
    return {"name": "dpo-reference-bench", "seed": 0, "model": model, "data": quickstart["data"],
            "stages": {"policy": dpo}, "tracking": "none", "runs_dir": str(runs_dir)}  # fmt: skip


def timed_dpo(model: str, epochs: int | None, pairs: int, precompute: bool, work: Path) -> dict[str, Any]:
    """One DPO training (in a worker process): seconds in all and per epoch, and the per-step loss."""
    from transformers import TrainerCallback
    from trl import DPOTrainer  # noqa: F401  (its import is not timed)

    from rlhf.config import PipelineConfig
    from rlhf.workspace import standalone_context
    from stages import policy

    epoch_ends: list[float] = []

    class EpochEnds(TrainerCallback):
        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            epoch_ends.append(time.perf_counter())

    cfg = PipelineConfig.model_validate(bench_config(model, epochs, precompute, work / "runs"))
    stage_cfg, ctx = standalone_context(cfg, "policy", work / "run")
    data, _ = policy.preference_pairs(stage_cfg, ctx)
    if pairs:
        data["train"] = data["train"].select(range(min(pairs, len(data["train"]))))
    started = time.perf_counter()
    trainer = policy.build_dpo_trainer(stage_cfg, ctx, data)
    built = time.perf_counter()
    trainer.add_callback(EpochEnds())
    trainer.train()
    ended = time.perf_counter()
    epochs_s = [b - a for a, b in zip([built, *epoch_ends], epoch_ends, strict=False)]
    return {
        "total_s": ended - started,
        "build_s": built - started,
        "epoch_s": statistics.median(epochs_s[1:] or epochs_s),
        "steps": trainer.state.global_step,
        "loss": [row["loss"] for row in trainer.state.log_history if "loss" in row],
        "train_pairs": len(data["train"]),
    }


def run_worker(args: argparse.Namespace, side: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        env = os.environ | {"HF_DATASETS_CACHE": str(Path(tmp) / "hf-datasets"), "TQDM_DISABLE": "1"}
        payload = [args.model, args.epochs, args.pairs, SIDES[side], tmp]
        done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(payload)], env=env, cwd=REPO,
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-6000:])
            raise SystemExit(f"{side} failed (exit {done.returncode})")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="small-llama")
    parser.add_argument("--pairs", type=int, default=640, help="training pairs kept (0: all)")
    parser.add_argument("--epochs", type=int, help="default: the quickstart's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model, epochs, pairs, precompute, work = json.loads(args.worker)
        print(json.dumps(timed_dpo(model, epochs, pairs, precompute, Path(work))))
        return
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        for side in SIDES if repeat % 2 == 0 else list(SIDES)[::-1]:
            runs[side].append(run_worker(args, side))
            print(f"repeat {repeat + 1} {side}: {runs[side][-1]['total_s']:.1f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    first = runs["precomputed"][0]
    curves = zip(first["loss"], runs["every step"][0]["loss"], strict=True)
    print(
        f"{args.model}, {first['train_pairs']} training pairs, {first['steps']} steps, median of {args.repeats}"
    )
    print("| reference log-probs | s in all | of which building the trainer | s / epoch |")
    print("|---|---:|---:|---:|")
    med = {side: {k: statistics.median(r[k] for r in rs) for k in ("total_s", "build_s", "epoch_s")}
           for side, rs in runs.items()}  # fmt: skip
    for side, m in med.items():
        print(f"| {side} | {m['total_s']:.1f} | {m['build_s']:.1f} | {m['epoch_s']:.2f} |")
    speedup = {k: med["every step"][k] / med["precomputed"][k] for k in ("total_s", "epoch_s")}
    print(f"precomputed is {speedup['total_s']:.2f}x faster in all, {speedup['epoch_s']:.2f}x per epoch; "
          f"largest loss difference over {first['steps']} steps: {max(abs(a - b) for a, b in curves):.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
