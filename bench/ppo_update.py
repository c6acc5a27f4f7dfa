"""One PPO update, timed: generation, scoring and training, tokens/s and peak memory, ours against trl 1.12.0.

    python bench/ppo_update.py                                  # tiny task models, ours vs trl, 3 repeats
    python bench/ppo_update.py --model small --updates 5        # ~40M parameters, timing and memory only
    python bench/ppo_update.py --work /tmp/ppo-bench --json ppo_update.json   # keep (and reuse) the set-up

Models. `tiny`: the quickstart's SFT policy and reward model, trained once by the pipeline in the work
directory (a copy of configs/quickstart.yaml with only its `sft` and `reward` stages, as that file has them;
`--work` keeps them for the next invocation). `small`: the built-in `small-llama` (~40M parameters),
random-init, with a random-init reward head on a copy of it: nothing is trained, so its gold reward means
nothing and is not reported. Both sides train on the synthetic task's SFT prompts and evaluate on its
held-out prompts.

Each (side, repeat) runs in its own process, the sides alternating within each repeat, so peak memory is
that run's alone and drift in machine load hits both sides alike. The set-up and the SFT start's evaluation
run in worker processes too: a child's peak RSS includes its launcher's RSS at the fork, so the launcher
stays small. Repeat r uses seed `--seed + r` on both sides (training, and the evaluation's sampling).

One update is a rollout of `--batch` prompts with one response each, then `--ppo-epochs` passes in
`--mini-batches` minibatches, one optimizer step per minibatch (no gradient accumulation). Per run, the time
per update is the median wall time of updates 2..N (update 1 is warm-up); the table shows medians over runs.
Peak memory is the process's peak RSS after training (libraries, the four models, training), `loaded` the
same just before training; CUDA peak allocation on a GPU. Gold reward and EOS share: after the last update,
`--eval-samples` samples per held-out prompt at the training temperature, scored by the task's programmatic
reward; the SFT start is sampled the same way, for reference.

Matched: model directories, prompt file, rollout size, minibatches, PPO epochs, response length, temperature
(plain sampling: top_k 0, top_p 1), kl_coef (k1 estimator), missing-EOS penalty, learning rate (linear to 0,
no warm-up), AdamW eps 1e-5 (ours' fixed value), fp32, the value model (a trainable copy of the reward
model; `--value-model policy_head` gives ours a value head on the policy's trunk instead), gamma 1, lam 0.95, clip ranges 0.2, vf_coef 0.1, whitened advantages, threads. With `--recipe
matched` (the default) ours also optimizes the raw reward-model score, unclipped and without gradient
clipping (max_grad_norm 1e9: the norm is still computed), as trl does: the same objective on both sides.
`--recipe ours` runs ours with its stage defaults instead (scores normalized by the reward model's stored
mean/std and clipped to +-10, gradient norm clipped to 1).

Left as they are (the implementations, not settings): trl takes the old log-probs from generate's scores,
ours runs a separate policy forward for them (in `scoring`); trl adds the score one position after the EOS
(its value mask covers that position), ours on the last valid token; trl steps the learning rate once per
update, ours once per optimizer step (both linear to 0 at the end); trl calls gc.collect() twice per update,
a fixed cost that is most of its update time on the tiny model; each side shuffles the prompts its own way. trl's update time is one
number (between its `on_step_end` callbacks): no phase split or tokens/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from policy_runs import (
    GOLD_COLUMNS,
    MEMORY_COLUMNS,
    REPO,
    TIME_COLUMN,
    Models,
    add_common_arguments,
    alternating,
    comparison_table,
    spawn,
    start_gold,
    steady_median,
    summarize_runs,
    timed_stage,
    train_ours,
    worker_command,
)

QUICKSTART = REPO / "configs" / "quickstart.yaml"
BASELINE = REPO / "bench" / "trl_ppo_baseline.py"
SIDES = ("ours", "trl")
# ours' per-update history fields reported (medians over updates 2..N)
HISTORY_KEYS = (
    "generation_s",
    "scoring_s",
    "training_s",
    "rollout_tokens_per_s",
    "train_tokens_per_s",
    "response_tokens",
    "weight_sync_s",
)
ADAM_EPS = 1e-5  # rlhf.ppo's AdamW eps (fixed there); trl is given the same
RECIPES = {  # ours' settings that trl 1.12 has no switch for: raw scores and no gradient clipping, or ours
    "matched": {"normalize_rewards": False, "reward_clip": None, "max_grad_norm": 1e9},
    "ours": {"normalize_rewards": True, "reward_clip": 10.0, "max_grad_norm": 1.0},
}


@dataclass(frozen=True)
class Settings:
    """What both sides run with; `seed` is set per repeat."""

    updates: int
    batch: int  # prompts per update, one response each
    mini_batches: int
    ppo_epochs: int
    max_new_tokens: int
    temperature: float
    kl_coef: float
    learning_rate: float
    missing_eos_penalty: float
    eval_samples: int
    threads: int
    recipe: str
    value_model: str = "reward"  # ours' (trl's is always a trainable copy of the reward model)
    seed: int = 0
    engine: str = "hf"  # ours' rollout engine (bench/rollout_engine.py compares hf and vllm)


# --------------------------------------------------------------------------------------------------
# Set-up: the models both sides start from


def setup_tiny(work: Path, threads: int, overrides: list[str]) -> Models:
    """SFT policy and reward model of the quickstart, trained by our pipeline once per work directory and
    config: a changed configs/quickstart.yaml (or --setup-override) trains them again, in a run of its own."""
    import yaml

    from rlhf.config import apply_override, validate_config

    raw = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    raw["stages"] = {name: raw["stages"][name] for name in ("sft", "reward")}
    for override in (
        "tracking=none",
        "evaluation=null",
        "stages.sft.evaluation=null",
        f"registry={work / 'registry'}",
        f"runs_dir={work / 'runs'}",
        *overrides,
    ):
        apply_override(raw, override)
    key = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]  # before the thread count
    cached = work / f"tiny-{key}.json"
    if cached.is_file():
        return Models(**{**json.loads(cached.read_text(encoding="utf-8")), "setup_s": 0.0})
    from rlhf.pipeline import run_pipeline
    from rlhf.registry import Registry

    for stage in raw["stages"].values():
        stage["num_threads"] = threads
    started = time.perf_counter()
    run = run_pipeline(validate_config(raw, source=str(QUICKSTART)), work / "runs" / f"setup-{key}")
    registry = Registry(work / "registry")
    refs = {result.stage: result.ref for result in run.results}  # the versions this run published
    metrics = registry.manifest(refs["reward"]).metrics
    data = run.run_dir / "data" / "synthetic"
    models = Models(
        policy=str(registry.resolve(refs["sft"])),
        reward=str(registry.resolve(refs["reward"])),
        prompts=str(data / "sft_train.jsonl"),
        eval_prompts=str(data / "eval_prompts.jsonl"),
        reward_stats=(metrics["reward_mean"], metrics["reward_std"]) if "reward_std" in metrics else None,
        gold=True,
        setup_s=time.perf_counter() - started,
    )
    cached.write_text(json.dumps(asdict(models), indent=2), encoding="utf-8")
    return models


def setup_small(work: Path) -> Models:
    """`small-llama` random-init as the policy, a random-init one-output head on it as the reward model."""
    from rlhf.builtin_models import materialize
    from rlhf.data.synthetic import SynthConfig, write_synthetic_task
    from rlhf.models import load_reward_model, save_pretrained_atomic
    from rlhf.settings import ModelSpec

    started = time.perf_counter()
    root = work / "small"
    policy, reward, task = root / "policy", root / "reward", root / "task"
    built = not (reward / "config.json").is_file() or not (task / "eval_prompts.jsonl").is_file()
    if built:
        materialize(ModelSpec(name="small-llama"), policy, seed=0)
        save_pretrained_atomic(*load_reward_model(ModelSpec(name=str(policy))), reward)
        write_synthetic_task(task, SynthConfig(num_sft_train=2000, num_preference_tasks=1))
    return Models(
        policy=str(policy),
        reward=str(reward),
        prompts=str(task / "sft_train.jsonl"),
        eval_prompts=str(task / "eval_prompts.jsonl"),
        reward_stats=None,
        gold=False,
        setup_s=time.perf_counter() - started if built else 0.0,
    )


# --------------------------------------------------------------------------------------------------
# Workers: one timed run each, in its own process


def ours_worker(models: Models, settings: Settings) -> dict[str, Any]:
    """`rlhf.ppo.PPOTrainer` (PPO) for `settings.updates` updates, then the trained policy sampled and scored."""
    from rlhf.settings import ModelSpec, RewardSource

    s, recipe = settings, RECIPES[settings.recipe]
    rollout = {"max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "samples_per_prompt": 1,
               "batch_size": s.batch, "engine": s.engine}  # fmt: skip
    ppo = {"prompts_per_update": s.batch, "ppo_epochs": s.ppo_epochs, "num_mini_batches": s.mini_batches,
           "kl_coef": s.kl_coef, "value_model": s.value_model, "missing_eos_penalty": s.missing_eos_penalty,
           "normalize_rewards": recipe["normalize_rewards"], "reward_clip": recipe["reward_clip"]}  # fmt: skip
    cfg = timed_stage("ppo", s.updates, s.learning_rate, recipe["max_grad_norm"], rollout, ppo)
    reward = RewardSource(model=ModelSpec(name=models.reward))
    outcome, figures = train_ours(cfg, [reward], [models.reward_stats], models, settings)
    history = outcome.history
    steady = history[1:] or history  # update 1 is warm-up
    return {
        **figures,
        **{key: statistics.median(row[key] for row in steady) for key in HISTORY_KEYS},
        "score_raw_last": history[-1]["score_raw_mean"],
        "kl_last": history[-1]["kl"],
    }


def run_side(side: str, models: Models, settings: Settings, trl_python: Path | None) -> dict[str, Any]:
    """One timed run of one side in a fresh process: its JSON result."""
    with tempfile.TemporaryDirectory(prefix="ppo-update-") as tmp:
        out = Path(tmp) / "result.json"
        if side == "ours":
            cmd = worker_command(
                __file__, "ours", {"models": asdict(models), "settings": asdict(settings)}, out
            )
        else:
            s = settings
            flags = {"policy": models.policy, "reward": models.reward, "prompts": models.prompts,
                     "eval-prompts": models.eval_prompts, "updates": s.updates, "batch-size": s.batch,
                     "mini-batches": s.mini_batches, "ppo-epochs": s.ppo_epochs,
                     "max-new-tokens": s.max_new_tokens, "temperature": s.temperature, "kl-coef": s.kl_coef,
                     "learning-rate": s.learning_rate, "adam-epsilon": ADAM_EPS,
                     "missing-eos-penalty": s.missing_eos_penalty, "seed": s.seed,
                     "samples-per-prompt": s.eval_samples, "threads": s.threads, "out": out}  # fmt: skip
            cmd = [str(trl_python), str(BASELINE), *(a for k, v in flags.items() for a in (f"--{k}", str(v)))]
        result = spawn(cmd, f"{side} run")
    if side == "trl":  # the same steady-state median as ours (updates 2..N), and ours' field names
        result["median_seconds_per_update"] = steady_median(result["seconds_per_update"])
        result["device"] = result["settings"]["device"]
        result["policy_parameters"] = result["settings"]["policy_parameters"]
        if not models.gold:
            result["gold_reward"] = result["eos_share"] = None
    return result


# --------------------------------------------------------------------------------------------------
# Report


COLUMNS = [  # ours' phases and tokens/s have no trl counterpart
    TIME_COLUMN,
    ("generation s", "generation_s", ".3f"),
    ("scoring s", "scoring_s", ".3f"),
    ("training s", "training_s", ".3f"),
    ("rollout tok/s", "rollout_tokens_per_s", ",.0f"),
    ("train tok/s", "train_tokens_per_s", ",.0f"),
    *MEMORY_COLUMNS,
    *GOLD_COLUMNS,
]


def table(model: str, settings: Settings, medians: dict[str, dict[str, Any]], start: dict[str, float] | None,
          repeats: int) -> str:  # fmt: skip
    """The PPO comparison as `comparison_table` shows it, titled with the model and settings."""
    s, first = settings, next(iter(medians.values()))
    title = (
        f"PPO update, {model} model ({first['policy_parameters'] / 1e6:.2f}M parameters) on {first['device']}: "
        f"{s.batch} prompts x 1 response, {s.max_new_tokens} new tokens, {s.ppo_epochs} PPO epochs x "
        f"{s.mini_batches} minibatches, {s.updates} updates, recipe {s.recipe}; median of {repeats} runs "
        "(each: the median over updates 2..N)"
    )
    text = comparison_table(title, COLUMNS, medians, {"ours": "ours (rlhf.ppo)", "trl": "trl 1.12.0"}, start)
    if start is None:
        text += "\n\nGold reward: not reported (random-init models, nothing trained)."
    return text


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("tiny", "small"), nargs="+", default=["tiny"])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64, help="prompts per update (one response each)")
    parser.add_argument("--mini-batches", type=int, default=2)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--missing-eos-penalty", type=float, default=1.0)
    parser.add_argument("--recipe", choices=list(RECIPES), default="matched")
    parser.add_argument("--value-model", choices=("reward", "policy_head"), default="reward",
                        help="ours' critic: a trainable copy of the reward model (as trl's) or a head on the policy")  # fmt: skip
    add_common_arguments(parser, SIDES, ["ours", "setup", "start"])
    args = parser.parse_args(argv)
    if args.batch % args.mini_batches:
        parser.error("--batch must be a multiple of --mini-batches")
    return args


def run_worker(kind: str, payload: dict[str, Any]) -> Any:
    """The work of one worker process (heavy imports happen here, never in the launching process)."""
    if kind == "ours":
        return ours_worker(Models(**payload["models"]), Settings(**payload["settings"]))
    if kind == "setup":
        work = Path(payload["work"])
        if payload["model"] == "tiny":
            return asdict(setup_tiny(work, payload["threads"], payload["overrides"]))
        return asdict(setup_small(work))
    models, settings = Models(**payload["models"]), Settings(**payload["settings"])
    return start_gold(models, settings, payload["seeds"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args.worker, json.loads(args.json_args))
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        return 0

    sys.path.insert(0, str(REPO / "bench"))
    from trl_venv import ensure_trl_venv

    trl_python = ensure_trl_venv(REPO) if "trl" in args.sides else None
    # engine: no flag here (bench/rollout_engine.py sets it); the default, hf
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)})
    seeds = [args.seed + repeat for repeat in range(args.repeats)]
    report: dict[str, Any] = {"settings": asdict(settings), "models": {}}
    with tempfile.TemporaryDirectory(prefix="ppo-update-work-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for model in args.model:
            setup = {
                "model": model,
                "work": str(work),
                "threads": args.threads,
                "overrides": args.setup_override,
            }
            models = Models(
                **spawn(worker_command(__file__, "setup", setup, work / f"{model}-setup.json"), "set-up")
            )
            print(
                f"{model}: set-up {models.setup_s:.0f} s ({'reused' if not models.setup_s else 'built'})",
                file=sys.stderr,
            )

            def run(side: str, seed: int, models: Models = models) -> dict[str, Any]:
                return run_side(side, models, replace(settings, seed=seed), trl_python)

            runs = alternating(args.sides, seeds, run, model)
            medians = {side: summarize_runs(side_runs) for side, side_runs in runs.items()}
            start = None
            if models.gold:  # the SFT start sampled as the trained policies are
                payload = {"models": asdict(models), "settings": asdict(settings), "seeds": seeds}
                start = spawn(
                    worker_command(__file__, "start", payload, work / "start.json"), "SFT start evaluation"
                )
            print("\n" + table(model, settings, medians, start, args.repeats) + "\n")
            report["models"][model] = {
                "setup": asdict(models),
                "start": start,
                "medians": medians,
                "runs": runs,
            }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
