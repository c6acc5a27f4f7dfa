"""SFT training throughput: padded vs packed batches, fp32 vs bf16, as ratios against a baseline.

Each (variant, repeat) runs in its own process, so peak memory is that variant's alone and no variant
warms caches for another. The baseline (padded, fp32) is measured in the same invocation; the table
reports medians over repeats and each variant's ratio to the baseline's median.

    python bench/sft_throughput.py --model tiny-llama --repeats 3
    python bench/sft_throughput.py --model small-llama --steps 20     # ~40M parameters

Tokens are the non-padding tokens the trainer consumed (transformers' `num_input_tokens_seen`), timed from
the end of the warm-up steps to the end of training.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "padded-fp32": {"packing": False, "bf16": False},
    "packed-fp32": {"packing": True, "bf16": False},
    "padded-bf16": {"packing": False, "bf16": True},
    "packed-bf16": {"packing": True, "bf16": True},
}
BASELINE = "padded-fp32"


def worker(model_name: str, variant: str, steps: int, warmup: int, threads: int) -> dict[str, float]:
    """One timed SFT run in this process."""
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from rlhf.builtin_models import build_builtin_model
    from rlhf.data.files import SFT_FORMS, load_rows
    from rlhf.data.synthetic import SynthConfig, write_synthetic_task

    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    options = VARIANTS[variant]
    with tempfile.TemporaryDirectory() as tmp:
        files = write_synthetic_task(
            Path(tmp) / "task", SynthConfig(num_sft_train=6000, num_preference_tasks=10)
        )
        data, _ = load_rows(files["sft_train"], SFT_FORMS)
        model, tokenizer = build_builtin_model(model_name, seed=0)
        marks: dict[str, tuple[float, int]] = {}

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **_):
                if state.global_step in (warmup, steps):
                    if cuda:
                        torch.cuda.synchronize()
                    marks[str(state.global_step)] = (time.perf_counter(), state.num_input_tokens_seen)

        # Similar real tokens per step: 32 short padded rows, or 2 packed rows of 256 tokens.
        batch, max_length = (2, 256) if options["packing"] else (32, 64)
        args = SFTConfig(
            output_dir=str(Path(tmp) / "out"), max_steps=steps, per_device_train_batch_size=batch,
            max_length=max_length, packing=options["packing"], bf16=options["bf16"], use_cpu=not cuda,
            learning_rate=1e-3, logging_steps=10_000, save_strategy="no", report_to="none",
            gradient_checkpointing=False, disable_tqdm=True, include_num_input_tokens_seen="non_padding",
        )  # fmt: skip
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Clock()]
        )
        trainer.train()
    (t0, n0), (t1, n1) = marks[str(warmup)], marks[str(steps)]
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "peak_mib": peak / 2**20,
        "device": "cuda" if cuda else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.worker, args.steps, args.warmup, args.threads)))
        return

    variants = [BASELINE, *[v for v in args.variants if v != BASELINE]]
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for repeat in range(args.repeats):  # interleaved, so drift in machine load hits every variant alike
        for variant in variants:
            cmd = [sys.executable, __file__, "--worker", variant, "--model", args.model, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads)]  # fmt: skip
            out = (
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            runs[variant].append(json.loads(out))
            print(f"repeat {repeat + 1}/{args.repeats} {variant}: {runs[variant][-1]}", file=sys.stderr)

    base = statistics.median(r["tokens_per_s"] for r in runs[BASELINE])
    device = runs[BASELINE][0]["device"]
    print(f"\nSFT throughput, {args.model} on {device}, median of {args.repeats} runs")
    print("| variant | tokens/s | ratio vs padded-fp32 | peak memory (MiB) |")
    print("|---|---:|---:|---:|")
    table = {}
    for variant in variants:
        tps = statistics.median(r["tokens_per_s"] for r in runs[variant])
        peak = statistics.median(r["peak_mib"] for r in runs[variant])
        table[variant] = {"tokens_per_s": tps, "ratio": tps / base, "peak_mib": peak}
        print(f"| {variant} | {tps:,.0f} | {tps / base:.2f}x | {peak:,.0f} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"model": args.model, "device": device, "results": table}, indent=2)
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
