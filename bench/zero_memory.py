"""Per-rank peak memory of the SFT stage on a ~100M-parameter model at ZeRO-0, 2 and 3 on 2 processes.

What ZeRO saves: with Adam in fp32 every rank holds 16 bytes per parameter of model states (weights 4,
gradients 4, two moments 8) without partitioning; ZeRO-2 splits gradients and optimizer states across the
ranks, ZeRO-3 the weights too. Each rank runs the real stage (`stages.sft` under torchrun, measured by
`rank_memory.py`) and records its peak memory in training (from DeepSpeed's set-up on, where partitioning
acts) and over the whole stage (loading included). The ZeRO stages run interleaved, each repeat in fresh processes;
the table gives each rank's median over repeats, and the larger rank's ratio to ZeRO-0 measured in the
same run.

    python bench/zero_memory.py --repeats 3          # medium-llama: 99.2M parameters
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from rank_memory import run_stage

VARIANTS: dict[str, dict[str, object]] = {
    "ZeRO-0": {"stage": 0},
    "ZeRO-2": {"stage": 2},
    "ZeRO-3": {"stage": 3},
    # DeepSpeed's own stage3_max_live_parameters / max_reuse_distance, over the 3e7 that `zero_stage: 3` sets
    "ZeRO-3, live/reuse 1e9": {
        "stage": 3,
        "stage3_max_live_parameters": 10**9,
        "stage3_max_reuse_distance": 10**9,
    },
}
BASELINE = "ZeRO-0"
CONFIG = """
name: zero-memory
seed: 0
model: {model}
data:
  synthetic: {{num_sft_train: 400, num_sft_eval: 8, num_preference_tasks: 10}}
stages:
  sft: {{learning_rate: 1.0e-4, max_steps: {steps}, per_device_train_batch_size: 4, max_length: 128,
        logging_steps: 1, save_steps: 100000, num_threads: 1, evaluation: null}}
evaluation: null
tracking: none
registry: {folder}/registry
runs_dir: {folder}/runs
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="medium-llama")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from rlhf.builtin_models import build_builtin_model
    from rlhf.distributed import has_gpu

    params = sum(p.numel() for p in build_builtin_model(args.model, seed=0)[0].parameters())
    # variant -> (rank, "stage" | "training") -> one peak per repeat
    memory: dict[str, dict[tuple[int, str], list[float]]] = {name: {} for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, zero in VARIANTS.items():  # interleaved, so drift over time hits every variant alike
                config = CONFIG.format(model=args.model, steps=args.steps, folder=tmp)
                run = run_stage(config, zero, Path(tmp))
                assert run.result["metrics"]["steps"] == args.steps, run.result  # it trained
                ranks = run.ranks
                for rank, peaks in enumerate(ranks):
                    for kind in ("training", "stage"):
                        memory[name].setdefault((rank, kind), []).append(peaks[kind])
                shown = "; ".join(f"rank {r}: stage {m['stage']:,.0f}, training {m['training']:,.0f}"
                                  for r, m in enumerate(ranks))  # fmt: skip
                print(f"repeat {repeat}, {name}: {shown} MiB", flush=True)
    unit = "GPU memory" if has_gpu() else "resident memory"
    median = {
        name: {key: statistics.median(values) for key, values in peaks.items()}
        for name, peaks in memory.items()
    }
    print(
        f"\n{args.model}: {params / 1e6:.1f}M parameters, 2 processes, peak {unit} (MiB), medians of {args.repeats}"
    )
    print(
        f"| variant | rank 0 in training | rank 1 in training | larger rank over the stage | vs {BASELINE} |"
    )
    print("|---|---:|---:|---:|---:|")
    base = max(median[BASELINE][rank, "stage"] for rank in (0, 1))
    for name, peaks in median.items():
        stage = max(peaks[rank, "stage"] for rank in (0, 1))
        print(f"| {name} | {peaks[0, 'training']:,.0f} | {peaks[1, 'training']:,.0f} | {stage:,.0f} "
              f"| {stage / base:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
