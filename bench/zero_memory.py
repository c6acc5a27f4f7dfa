"""Per-rank peak memory of the SFT stage on a ~100M-parameter model at ZeRO-0, 2 and 3 on 2 processes.

What ZeRO saves: with Adam in fp32 every rank holds 16 bytes per parameter of model states (weights 4,
gradients 4, two moments 8) without partitioning; ZeRO-2 splits gradients and optimizer states across the
ranks, ZeRO-3 the weights too. Each rank runs the real stage (`stages.sft` under torchrun, DeepSpeed on its
CPU accelerator here, CUDA on GPUs) and records its peak memory in training (from DeepSpeed's set-up on,
where partitioning acts) and over the whole stage (which also holds each rank's loading of the full model
before DeepSpeed partitions it): resident memory on CPUs, allocated device memory on GPUs. On CPUs glibc is
told to hand every freed tensor back to the system (MALLOC_MMAP_THRESHOLD_), so resident memory follows live
tensors rather than the allocator's cache. The ZeRO stages run interleaved, each repeat in fresh processes;
the table gives each rank's median over repeats, and the larger rank's ratio to ZeRO-0 measured in the
same run.

    python bench/zero_memory.py --repeats 3          # medium-llama: 99.2M parameters

`--load` measures what loading costs instead, at a real shape: each rank's peak before training (loading the
model; ZeRO-3 loads it partitioned, `deepspeed.zero.Init`) and in the first step, at ZeRO-0 and ZeRO-3; and
one process loading the model (`rlhf.models.load_causal_lm`) in fp32 and in bf16, beside one that only
imports the libraries. (bf16 training under DeepSpeed cannot run here: transformers refuses bf16 without a
GPU once `use_cpu` is off, which DeepSpeed's CPU accelerator needs.)

    python bench/zero_memory.py --load --model qwen2.5-0.5b-shape --steps 1 --repeats 1
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# DeepSpeed keeps gathered ZeRO-3 weights live up to stage3_max_live_parameters / max_reuse_distance (1e9
# each by default): more than this whole model, so the last variant lowers them to let partitioning act.
RELEASING = {"stage3_max_live_parameters": 10_000_000, "stage3_max_reuse_distance": 10_000_000}
VARIANTS: dict[str, dict[str, object]] = {
    "ZeRO-0": {"stage": 0},
    "ZeRO-2": {"stage": 2},
    "ZeRO-3": {"stage": 3},
    "ZeRO-3, live/reuse 1e7": {"stage": 3, **RELEASING},
}
BASELINE = "ZeRO-0"
# --load: (zero_optimization, precision)
LOAD_VARIANTS: dict[str, tuple[dict[str, object], str]] = {
    "ZeRO-0, fp32": ({"stage": 0}, "fp32"),
    "ZeRO-3, fp32": ({"stage": 3, **RELEASING}, "fp32"),
}
LOAD_ALONE = """
import re, sys
from pathlib import Path
import torch, transformers  # the libraries, loaded in every variant
from rlhf.models import load_causal_lm
from rlhf.settings import ModelSpec
if sys.argv[2] != "imports only":  # every weight read once: memory-mapped pages count once touched
    model, _ = load_causal_lm(ModelSpec(name=sys.argv[1]), sys.argv[2])
    sum(float(p.sum()) for p in model.parameters())
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024)
"""

CONFIG = """
name: zero-memory
seed: 0
model: {model}
data:
  synthetic: {{num_sft_train: 400, num_sft_eval: 8, num_preference_tasks: 10}}
stages:
  sft: {{learning_rate: 1.0e-4, max_steps: {steps}, per_device_train_batch_size: 4, max_length: 128,
        logging_steps: 1, save_steps: 100000, num_threads: 1, evaluation: null, precision: {precision}}}
evaluation: null
tracking: none
registry: {folder}/registry
runs_dir: {folder}/runs
"""


def worker(out_dir: Path, argv: list[str]) -> int:
    """One rank of the stage. Its peak memory over the whole stage and over training alone (from DeepSpeed's
    set-up, inside `Trainer.train`, to the end) land in out_dir/rank<r>.json when the process ends."""
    import torch
    import transformers

    from stages.sft import main

    cuda = torch.cuda.is_available()
    peaks: dict[str, float] = {}

    def peak_mib() -> float:
        if cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        status = Path("/proc/self/status").read_text(encoding="ascii")
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    def reset_peak() -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        else:  # Linux: "5" sets the high-water mark back to the current resident size
            Path("/proc/self/clear_refs").write_text("5", encoding="ascii")

    train = transformers.Trainer.train

    def measured_train(self: transformers.Trainer, *args: object, **kwargs: object) -> object:
        peaks["before_training"] = peak_mib()
        reset_peak()
        try:
            return train(self, *args, **kwargs)
        finally:
            peaks["training"] = peak_mib()

    transformers.Trainer.train = measured_train  # measurement only: the stage's training runs unchanged

    def record() -> None:
        peaks["stage"] = max([peak_mib(), *peaks.values()])
        (out_dir / f"rank{os.environ['RANK']}.json").write_text(json.dumps(peaks), encoding="utf-8")

    atexit.register(record)
    return main(argv)


def measure(
    zero: dict[str, object], model: str, steps: int, folder: Path, precision: str = "fp32"
) -> list[dict[str, float]]:
    """Run the stage on 2 processes with this `zero_optimization` (over what `zero_stage` sets); every rank's
    peak memory."""
    from rlhf.distributed import deepspeed_config, free_port, has_gpu
    from rlhf.settings import DistributedConfig

    config = folder / "pipeline.yaml"
    config.write_text(
        CONFIG.format(model=model, steps=steps, folder=folder, precision=precision), encoding="utf-8"
    )
    out_dir = Path(tempfile.mkdtemp(dir=folder))
    deepspeed = deepspeed_config(DistributedConfig(zero_stage=zero["stage"]))
    deepspeed["zero_optimization"] |= zero
    (out_dir / "deepspeed.json").write_text(json.dumps(deepspeed), encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), __file__, "--worker", str(out_dir), "--",
               "--config", str(config), "--run-dir", str(out_dir / "run"), f"distributed.deepspeed_config={out_dir / 'deepspeed.json'}",
               "distributed.num_processes=2"]  # fmt: skip
    cpu = {"DS_ACCELERATOR": "cpu", "MALLOC_MMAP_THRESHOLD_": "65536"}
    env = {**os.environ, "PYTHONPATH": str(REPO)} | ({} if has_gpu() else cpu)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"ZeRO {zero}: the stage failed:\n{done.stderr[-3000:]}")
    result = json.loads((out_dir / "run" / "sft" / "result.json").read_text(encoding="utf-8"))
    assert result["metrics"]["steps"] == steps, result  # it trained
    return [json.loads((out_dir / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="medium-llama")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--load", action="store_true", help="loading and the first step, ZeRO-0/3 x fp32/bf16"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        sys.exit(worker(args.worker, [a for a in rest if a != "--"]))

    from rlhf.builtin_models import build_builtin_model
    from rlhf.distributed import has_gpu

    params = sum(p.numel() for p in build_builtin_model(args.model, seed=0)[0].parameters())
    if args.load:
        sys.exit(load_table(args.model, params, args.steps, args.repeats))
    # variant -> (rank, "stage" | "training") -> one peak per repeat
    memory: dict[str, dict[tuple[int, str], list[float]]] = {name: {} for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, zero in VARIANTS.items():  # interleaved, so drift over time hits every variant alike
                ranks = measure(zero, args.model, args.steps, Path(tmp))
                for rank, peaks in enumerate(ranks):
                    for kind, value in peaks.items():
                        memory[name].setdefault((rank, kind), []).append(value)
                shown = "; ".join(f"rank {r}: stage {m['stage']:,.0f}, training {m['training']:,.0f}"
                                  for r, m in enumerate(ranks))  # fmt: skip
                print(f"repeat {repeat}, {name}: {shown} MiB", flush=True)
    unit = "allocated GPU memory" if has_gpu() else "resident memory"
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


def load_table(model: str, params: int, steps: int, repeats: int) -> None:
    """Peak memory before training (loading) and in training, per variant of LOAD_VARIANTS: the larger rank's
    median, and its ratio to ZeRO-0 at the same precision and to fp32 at the same ZeRO stage."""
    from rlhf.builtin_models import materialize
    from rlhf.settings import ModelSpec

    memory: dict[str, dict[str, list[float]]] = {name: {} for name in LOAD_VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        # materialized once here, so that no rank's peak includes building the random-init model
        directory = materialize(ModelSpec(name=model), Path(tmp) / "model")
        for repeat in range(repeats):
            for name, (zero, precision) in LOAD_VARIANTS.items():
                ranks = measure(zero, str(directory), steps, Path(tmp), precision)
                for kind in ("before_training", "training"):
                    memory[name].setdefault(kind, []).append(max(rank[kind] for rank in ranks))
                print(f"repeat {repeat}, {name}: larger rank: loading {memory[name]['before_training'][-1]:,.0f}, "
                      f"training {memory[name]['training'][-1]:,.0f} MiB", flush=True)  # fmt: skip
        alone = {dtype: [] for dtype in ("imports only", "float32", "bfloat16")}
        for _ in range(repeats):
            for dtype, values in alone.items():
                done = subprocess.run([sys.executable, "-c", LOAD_ALONE, str(directory), dtype], cwd=REPO,
                                      capture_output=True, text=True, check=True)  # fmt: skip
                values.append(float(done.stdout.split()[-1]))
    median = {name: {k: statistics.median(v) for k, v in peaks.items()} for name, peaks in memory.items()}
    print(f"\n{model}: {params / 1e6:.1f}M parameters, peak resident memory (MiB), medians of {repeats}")
    print("\nThe SFT stage on 2 processes, the larger rank:\n")
    print("| variant | loading | first step | loading vs ZeRO-0 |")
    print("|---|---:|---:|---:|")
    for name, peaks in median.items():
        load = peaks["before_training"]
        print(
            f"| {name} | {load:,.0f} | {peaks['training']:,.0f} | {load / median['ZeRO-0, fp32']['before_training']:.2f}x |"
        )
    base = statistics.median(alone["imports only"])
    print("\nOne process loading the model (`load_causal_lm`):\n")
    print("| dtype | peak | peak less the libraries' | vs float32 |")
    print("|---|---:|---:|---:|")
    fp32 = statistics.median(alone["float32"]) - base
    for dtype, values in alone.items():
        peak = statistics.median(values)
        print(f"| {dtype} | {peak:,.0f} | {peak - base:,.0f} | {(peak - base) / fp32:.2f}x |")


if __name__ == "__main__":
    main()
