"""What loading a real shape costs each rank: ZeRO-3 against ZeRO-0, bf16 against fp32, and PPO's frozen models
at ZeRO-3 against their replicated size. The model (default: the Qwen2.5-0.5B shape, saved in bf16 like the
real checkpoint) is materialized once as a Hugging Face directory, so that no rank's peak includes building it.

1. The SFT stage on 2 processes (`rank_memory.py`), fp32, at ZeRO-0 and at ZeRO-3 (partitioned from loading
   on, each rank reading only its partition's rows of the checkpoint): the larger rank's peak before its first
   model loads (the floor: libraries, distributed set-up, data), over loading, and in the first step; loading's
   ratio to ZeRO-0, whole and above the floor.
2. One process loading the model (`rlhf.models.load_causal_lm`) in fp32 and in bf16, every weight read, beside
   one that only imports the libraries. (bf16 training under DeepSpeed cannot run on a CPU: transformers
   refuses bf16 without a GPU once `use_cpu` is off, which DeepSpeed's CPU accelerator needs.)
3. The PPO stage at ZeRO-3 on 2 processes, the policy trained in full so that its reference is a model of its
   own, scored by a reward model of the same shape: what each frozen model holds on each rank once loaded
   (resident memory after its `load_weights` less before; its partition's bytes from the stage's
   `this rank holds` line) against its replicated size (every parameter in fp32).

    python bench/zero_load_memory.py --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rank_memory import REPO, run_stage

VARIANTS: dict[str, dict[str, object]] = {"ZeRO-0": {"stage": 0}, "ZeRO-3": {"stage": 3}}
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
SFT = """
name: zero-load-memory
seed: 0
model: {model}
data:
  synthetic: {{num_sft_train: 64, num_sft_eval: 4, num_preference_tasks: 10}}
stages:
  sft: {{learning_rate: 1.0e-5, max_steps: 1, per_device_train_batch_size: 2, max_length: 128,
        logging_steps: 1, save_steps: 100000, num_threads: 1, evaluation: null}}
evaluation: null
tracking: none
registry: {folder}/registry
runs_dir: {folder}/runs
"""
PPO = """
name: zero-load-memory-ppo
seed: 0
model: {model}
data:
  synthetic: {{num_sft_train: 8, num_sft_eval: 2, num_eval_prompts: 4, num_preference_tasks: 10}}
stages:
  policy:
    algorithm: ppo
    learning_rate: 1.0e-6
    max_steps: 1
    per_device_train_batch_size: 2
    max_length: 64
    logging_steps: 1
    save_steps: 100000
    num_threads: 1
    evaluation: null
    ppo: {{prompts_per_update: 2, value_model: policy_head, ppo_epochs: 1, reward_model: {{name: {model}}},
           rollout: {{max_new_tokens: 4, samples_per_prompt: 1, batch_size: 2}}}}
evaluation: null
tracking: none
registry: {folder}/registry
runs_dir: {folder}/runs
"""
FROZEN = ("reference", "reward model")


def loading(directory: Path, repeats: int, folder: Path) -> None:
    """Section 1: the SFT stage's floor, loading and first-step peaks (the larger rank's median)."""
    memory: dict[str, dict[str, list[float]]] = {name: {} for name in VARIANTS}
    for repeat in range(repeats):
        for name, zero in VARIANTS.items():
            run = run_stage(SFT.format(model=directory, folder=folder), zero, folder)
            for kind in ("before_load", "before_training", "training"):
                memory[name].setdefault(kind, []).append(max(rank[kind] for rank in run.ranks))
            shown = ", ".join(f"{kind} {values[-1]:,.0f}" for kind, values in memory[name].items())
            print(f"repeat {repeat}, {name}, the larger rank: {shown} MiB", flush=True)
    median = {name: {k: statistics.median(v) for k, v in peaks.items()} for name, peaks in memory.items()}
    base = median["ZeRO-0"]
    print("\nThe SFT stage on 2 processes, fp32, the larger rank (MiB):\n")
    print(
        "| variant | floor (before loading) | loading | first step | loading vs ZeRO-0 | above the floor vs ZeRO-0 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, peaks in median.items():
        load, floor = peaks["before_training"], peaks["before_load"]
        above = (load - floor) / (base["before_training"] - base["before_load"])
        print(f"| {name} | {floor:,.0f} | {load:,.0f} | {peaks['training']:,.0f} | "
              f"{load / base['before_training']:.2f}x | {above:.2f}x |")  # fmt: skip


def one_process(directory: Path, repeats: int) -> None:
    """Section 2: one process loading the model in fp32 and in bf16."""
    alone: dict[str, list[float]] = {dtype: [] for dtype in ("imports only", "float32", "bfloat16")}
    for _ in range(repeats):
        for dtype, values in alone.items():
            done = subprocess.run([sys.executable, "-c", LOAD_ALONE, str(directory), dtype], cwd=REPO,
                                  capture_output=True, text=True, check=True)  # fmt: skip
            values.append(float(done.stdout.split()[-1]))
    base = statistics.median(alone["imports only"])
    fp32 = statistics.median(alone["float32"]) - base
    print("\nOne process loading the model (`load_causal_lm`), every weight read (MiB):\n")
    print("| dtype | peak | peak less the libraries' | vs float32 |")
    print("|---|---:|---:|---:|")
    for dtype, values in alone.items():
        peak = statistics.median(values)
        print(f"| {dtype} | {peak:,.0f} | {peak - base:,.0f} | {(peak - base) / fp32:.2f}x |")


def frozen_models(directory: Path, folder: Path) -> None:
    """Section 3: PPO at ZeRO-3, each frozen model's memory per rank against its replicated size."""
    from rlhf.sharding import held_from_log

    run = run_stage(PPO.format(model=directory, folder=folder), VARIANTS["ZeRO-3"], folder, stage="policy")
    assert run.result["metrics"]["steps"] == 1, run.result  # it trained
    held = held_from_log(run.log)
    # the models load in this order: policy, reference, reward model (rlhf.ppo_models.build_models)
    loaded = {str(rank): dict(zip(("trained policy", *FROZEN), r["loads"], strict=True))
              for rank, r in enumerate(run.ranks)}  # fmt: skip
    print("\nPPO at ZeRO-3 on 2 processes, fp32, each frozen model on each rank (MiB):\n")
    print("| rank | model | replicated | resident after loading less before | vs replicated | partition held "
          "| vs replicated |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for rank, models in loaded.items():
        for name in FROZEN:
            grown = models[name]["after"] - models[name]["before"]
            _, mine, whole = held[rank][name]
            print(f"| {rank} | {name} | {whole:,.0f} | {grown:,.0f} | {grown / whole:.2f}x | {mine:,.0f} "
                  f"| {mine / whole:.2f}x |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-0.5b-shape")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-ppo", action="store_true", help="sections 1 and 2 only")
    args = parser.parse_args()

    from rlhf.builtin_models import materialize
    from rlhf.model_sizes import Shapes, causal_params
    from rlhf.settings import ModelSpec

    with tempfile.TemporaryDirectory() as tmp:
        directory = materialize(ModelSpec(name=args.model), Path(tmp) / "model")
        params = causal_params(Shapes(Path(tmp) / "registry").of(str(directory), "model").dims)
        print(f"{args.model}: {params / 1e6:.1f}M parameters, medians of {args.repeats}", flush=True)
        loading(directory, args.repeats, Path(tmp))
        one_process(directory, args.repeats)
        if not args.skip_ppo:
            frozen_models(directory, Path(tmp))


if __name__ == "__main__":
    main()
