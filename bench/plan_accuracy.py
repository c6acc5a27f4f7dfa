"""`rlhf plan` against measurement: predicted and measured per-rank peak memory of the SFT stage for 3 model sizes
(the Qwen2.5-0.5B shape included) at ZeRO-0, 2 and 3 on 2 processes.

Each model is materialized once as a Hugging Face directory; each cell runs the real stage (`rank_memory.py`:
resident memory on a CPU, reserved memory plus the CUDA context on a GPU) and plans the same config with
`rlhf.memory_plan.plan` for 2 processes. The demonstrations are long enough that every sequence is cut at
`max_length`, as the plan assumes (it plans for full-length batches). Precision `auto`: fp32 here, bf16 on a
GPU. The error is (planned - measured) / measured of the larger rank's peak over the stage; the target is
within 20% in every cell.

    python bench/plan_accuracy.py
    python bench/plan_accuracy.py --processes 1 --zero 0 3        # on one GPU (scripts/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rank_memory import run_stage

SIZES = ("small-llama", "medium-llama", "qwen2.5-0.5b-shape")
ZERO_STAGES = (0, 2, 3)
TARGET = 0.20
CONFIG = """
name: plan-accuracy
seed: 0
model: {model}
data: {{sft_train: {data}}}
stages:
  sft: {{learning_rate: 1.0e-5, max_steps: 2, per_device_train_batch_size: {batch}, max_length: {length},
        logging_steps: 1, save_steps: 100000, num_threads: 1, evaluation: null, precision: auto}}
distributed: {{zero_stage: {zero}, num_processes: {processes}}}
evaluation: null
tracking: none
registry: {folder}/registry
runs_dir: {folder}/runs
"""
GiB = 2**30
PHASES = ("before_load", "before_training", "training", "stage")  # rank_memory.py's peaks


def long_demonstrations(path: Path, rows: int, words: int) -> Path:
    """Prompt/completion rows of `words` words each: longer than max_length in any of the tokenizers."""
    vocabulary = ("the", "model", "writes", "a", "short", "answer", "about", "red", "blue", "cats", "and", "dogs")  # fmt: skip
    with path.open("w", encoding="utf-8") as out:
        for row in range(rows):
            text = " ".join(vocabulary[(row + i) % len(vocabulary)] for i in range(words))
            out.write(json.dumps({"prompt": f"Question {row}: say something.", "completion": text}) + "\n")
    return path


def planned(config: str, processes: int) -> tuple[int, dict[str, int]]:
    """The plan's peak per process for the SFT stage of the config text, and its parts."""
    import yaml

    from rlhf.config import validate_config
    from rlhf.distributed import has_gpu
    from rlhf.memory_plan import Hardware, plan

    cfg = validate_config(yaml.safe_load(config))
    stage = plan(cfg, Hardware(processes, 1, 10**15), device="gpu" if has_gpu() else "cpu").stages[0]
    return stage.total, {name: value for name, value in vars(stage.components).items() if value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SIZES))
    parser.add_argument("--zero", nargs="+", type=int, default=list(ZERO_STAGES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()

    from rlhf.builtin_models import materialize
    from rlhf.settings import ModelSpec

    rows = []
    with tempfile.TemporaryDirectory(prefix="plan-accuracy-") as tmp:
        folder = Path(tmp)
        data = long_demonstrations(folder / "sft.jsonl", 64, args.max_length * 2)
        for model in args.models:
            directory = materialize(ModelSpec(name=model), folder / model)
            for zero in args.zero:
                config = CONFIG.format(model=directory, data=data, batch=args.batch, length=args.max_length,
                                       zero=zero, processes=args.processes, folder=folder)  # fmt: skip
                total, parts = planned(config, args.processes)
                run = run_stage(config, {"stage": zero}, folder, processes=args.processes)
                assert run.result["metrics"]["steps"] == 2, run.result  # it trained
                measured = max(rank["stage"] for rank in run.ranks) * 2**20
                rows.append((model, zero, total, measured))
                shown = ", ".join(f"{name} {value / GiB:.2f}" for name, value in parts.items())
                phases = "; ".join(f"rank {r}: " + ", ".join(f"{k} {rank[k] / 1024:.2f}" for k in PHASES)
                                   for r, rank in enumerate(run.ranks))  # fmt: skip
                print(f"{model} ZeRO-{zero}: planned {total / GiB:.2f} GiB ({shown}); measured "
                      f"{measured / GiB:.2f} GiB ({phases})", flush=True)  # fmt: skip
    print(
        f"\nSFT, {args.batch} x {args.max_length} tokens a micro-batch, {args.processes} processes, the larger rank:\n"
    )
    print("| model | ZeRO | planned (GiB) | measured (GiB) | error |")
    print("|---|---:|---:|---:|---:|")
    for model, zero, total, measured in rows:
        error = (total - measured) / measured
        mark = "" if abs(error) <= TARGET else " (over 20%)"
        print(f"| {model} | {zero} | {total / GiB:.2f} | {measured / GiB:.2f} | {error:+.0%}{mark} |")


if __name__ == "__main__":
    main()
