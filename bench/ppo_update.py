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
model), gamma 1, lam 0.95, clip ranges 0.2, vf_coef 0.1, whitened advantages, threads. With `--recipe
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
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
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
    seed: int = 0
    engine: str = "hf"  # ours' rollout engine (bench/rollout_engine.py compares hf and vllm)


@dataclass(frozen=True)
class Models:
    """The models and prompt files both sides read."""

    policy: str
    reward: str
    prompts: str
    eval_prompts: str
    reward_stats: tuple[float, float] | None  # the reward model's stored score mean/std, if any
    gold: bool  # trained task models: the gold reward means something
    setup_s: float  # seconds the set-up took when it ran (0 when reused)


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


def start_gold(models: Models, settings: Settings, seeds: list[int]) -> dict[str, float]:
    """Gold reward and EOS share of the SFT start, sampled as the trained policies are (median over seeds)."""
    import torch

    from rlhf.eval import generate, load_prompts, summarize
    from rlhf.models import load_causal_lm
    from rlhf.settings import ModelSpec

    torch.set_num_threads(settings.threads)
    model, tokenizer = load_causal_lm(ModelSpec(name=models.policy))
    spec = eval_spec(settings)
    runs = [
        summarize(generate(model, tokenizer, load_prompts(models.eval_prompts), spec, seed), "synthetic")
        for seed in seeds
    ]
    return {key: statistics.median(run[key] for run in runs) for key in ("gold_reward", "eos_share")}


def eval_spec(settings: Settings) -> Any:
    from rlhf.settings import GenerationSpec

    return GenerationSpec(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=0,
        top_p=1.0,
        samples_per_prompt=settings.eval_samples,
        batch_size=64,
    )


# --------------------------------------------------------------------------------------------------
# Workers: one timed run each, in its own process


def ours_worker(models: Models, settings: Settings) -> dict[str, Any]:
    """`rlhf.ppo.PPOTrainer` for `settings.updates` updates, then the trained policy sampled and scored."""
    import torch

    torch.set_num_threads(settings.threads)
    from rlhf.eval import generate, load_prompt_rows, load_prompts, summarize
    from rlhf.models import policy_training
    from rlhf.ppo import PPORun, PPOTrainer, ppo_accelerator
    from rlhf.ppo_models import build_models
    from rlhf.precision import LoadDtypes
    from rlhf.reward_sources import reward_terms, with_models
    from rlhf.settings import ModelSpec, PolicyStageConfig, PPOSpec, RewardSource, RolloutSpec

    recipe = RECIPES[settings.recipe]
    rollout = RolloutSpec(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=0,
        top_p=1.0,
        samples_per_prompt=1,
        batch_size=settings.batch,
        engine=settings.engine,
    )
    cfg = PolicyStageConfig(
        algorithm="ppo",
        learning_rate=settings.learning_rate,
        max_steps=settings.updates,
        per_device_train_batch_size=settings.batch // settings.mini_batches,  # one micro-batch per minibatch
        lr_scheduler_type="linear",
        warmup_steps=0,
        save_steps=10**9,
        logging_steps=10**9,
        max_grad_norm=recipe["max_grad_norm"],
        evaluation=None,
        ppo=PPOSpec(
            prompts_per_update=settings.batch,
            rollout=rollout,
            ppo_epochs=settings.ppo_epochs,
            num_mini_batches=settings.mini_batches,
            kl_coef=settings.kl_coef,
            value_model="reward",
            missing_eos_penalty=settings.missing_eos_penalty,
            normalize_rewards=recipe["normalize_rewards"],
            reward_clip=recipe["reward_clip"],
        ),
    )
    policy_spec = ModelSpec(name=models.policy)
    accelerator = ppo_accelerator(cfg, "stages.policy")
    reward_spec = ModelSpec(name=models.reward)
    built = build_models(policy_spec, [reward_spec], policy_training(policy_spec, None, "policy"),
                         "reward", LoadDtypes("float32", "float32"))  # fmt: skip
    terms = reward_terms([RewardSource(model=reward_spec)], [models.reward_stats], "stages.policy")
    ends: list[float] = []  # when each update's metrics were logged: the end of the update
    with tempfile.TemporaryDirectory(prefix="ppo-update-") as tmp:
        trainer = PPOTrainer(
            PPORun(
                cfg=cfg,
                models=built,
                rewards=with_models(terms, built.rewards),
                prompts=load_prompt_rows(models.prompts),
                checkpoint_dir=Path(tmp),
                seed=settings.seed,
                config_key="stages.policy",
                accelerator=accelerator,
                log_metrics=lambda metrics, step: ends.append(time.perf_counter()),
            )
        )
        loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        outcome = trainer.train()
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    wall = [b - a for a, b in zip([started, *ends], ends, strict=False)]
    history = outcome.history
    scores = {}
    if models.gold:
        samples = generate(
            outcome.policy,
            built.tokenizer,
            load_prompts(models.eval_prompts),
            eval_spec(settings),
            seed=settings.seed,
        )
        scores = summarize(samples, "synthetic")
    steady = history[1:] or history  # update 1 is warm-up

    def median(key: str) -> float:
        return statistics.median(row[key] for row in steady)

    return {
        "seconds_per_update": wall,
        "median_seconds_per_update": statistics.median(wall[1:] or wall),
        **{key: median(key) for key in HISTORY_KEYS},
        "peak_rss_mib": round(peak_rss, 1),
        "peak_rss_before_train_mib": round(loaded_rss, 1),
        "cuda_peak_mib": None if cuda_peak is None else round(cuda_peak, 1),
        "gold_reward": scores.get("gold_reward"),
        "eos_share": scores.get("eos_share"),
        "score_raw_last": history[-1]["score_raw_mean"],
        "kl_last": history[-1]["kl"],
        "device": str(trainer.accelerator.device),
        "policy_parameters": sum(p.numel() for p in outcome.policy.parameters()),
    }


def worker_command(kind: str, payload: dict[str, Any], out: Path) -> list[str]:
    """This script as a worker of `kind` (ours, setup, start) in a fresh process of the project's python."""
    return [sys.executable, __file__, "--worker", kind, "--json-args", json.dumps(payload), "--out", str(out)]


def spawn(cmd: list[str], what: str) -> Any:
    """Run a worker that writes its JSON result to the path after `--out`; its log is shown if it fails."""
    out = Path(cmd[cmd.index("--out") + 1])
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"{what} failed (exit {done.returncode})")
    return json.loads(out.read_text(encoding="utf-8"))


def run_side(side: str, models: Models, settings: Settings, trl_python: Path | None) -> dict[str, Any]:
    """One timed run of one side in a fresh process: its JSON result."""
    with tempfile.TemporaryDirectory(prefix="ppo-update-") as tmp:
        out = Path(tmp) / "result.json"
        if side == "ours":
            cmd = worker_command("ours", {"models": asdict(models), "settings": asdict(settings)}, out)
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
        seconds = result["seconds_per_update"]
        result["median_seconds_per_update"] = statistics.median(seconds[1:] or seconds)
        result["device"] = result["settings"]["device"]
        result["policy_parameters"] = result["settings"]["policy_parameters"]
        if not models.gold:
            result["gold_reward"] = result["eos_share"] = None
    return result


# --------------------------------------------------------------------------------------------------
# Report


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over runs of every numeric figure (None where a run has none)."""
    keys = [
        k for k, v in runs[0].items() if v is None or (isinstance(v, int | float) and not isinstance(v, bool))
    ]
    summary: dict[str, Any] = {"device": runs[0]["device"]}
    for key in keys:
        values = [run[key] for run in runs if run.get(key) is not None]
        summary[key] = statistics.median(values) if values else None
    return summary


COLUMNS = [  # title, result key, format; ours' phases and tokens/s have no trl counterpart
    ("s / update", "median_seconds_per_update", ".3f"),
    ("generation s", "generation_s", ".3f"),
    ("scoring s", "scoring_s", ".3f"),
    ("training s", "training_s", ".3f"),
    ("rollout tok/s", "rollout_tokens_per_s", ",.0f"),
    ("train tok/s", "train_tokens_per_s", ",.0f"),
    ("peak RSS MiB", "peak_rss_mib", ",.0f"),
    ("RSS loaded MiB", "peak_rss_before_train_mib", ",.0f"),
    ("CUDA peak MiB", "cuda_peak_mib", ",.0f"),
    ("gold reward", "gold_reward", ".3f"),
    ("EOS share", "eos_share", ".2f"),
]
RATIOS = ("median_seconds_per_update", "peak_rss_mib", "peak_rss_before_train_mib", "cuda_peak_mib")


def table(model: str, settings: Settings, medians: dict[str, dict[str, Any]], start: dict[str, float] | None,
          repeats: int) -> str:  # fmt: skip
    """One markdown table: the SFT start's gold reward, a row per side, ours/trl ratios (gold: difference)."""
    first = next(iter(medians.values()))
    on_gpu = any(m.get("cuda_peak_mib") for m in medians.values())
    columns = [c for c in COLUMNS if c[1] != "cuda_peak_mib" or on_gpu]

    def row(name: str, cells: dict[str, str]) -> str:
        return "| " + " | ".join([name, *(cells.get(key, "—") for _, key, _ in columns)]) + " |"

    def shown(m: dict[str, Any]) -> dict[str, str]:
        return {key: format(m[key], fmt) for _, key, fmt in columns if m.get(key) is not None}

    s, size = settings, first["policy_parameters"] / 1e6
    lines = [
        f"PPO update, {model} model ({size:.2f}M parameters) on {first['device']}: "
        f"{s.batch} prompts x 1 response, {s.max_new_tokens} new tokens, {s.ppo_epochs} PPO epochs x "
        f"{s.mini_batches} minibatches, {s.updates} updates, recipe {s.recipe}; median of {repeats} runs "
        "(each: the median over updates 2..N)",
        "",
        "| implementation | " + " | ".join(title for title, _, _ in columns) + " |",
        "|---" + "|---:" * len(columns) + "|",
    ]
    if start is not None:
        lines.append(row("SFT start", shown(start)))
    for side, m in medians.items():
        lines.append(row("ours (rlhf.ppo)" if side == "ours" else "trl 1.12.0", shown(m)))
    if set(medians) == set(SIDES):
        ours, trl = medians["ours"], medians["trl"]
        cells = {key: f"{ours[key] / trl[key]:.2f}x" for key in RATIOS if ours.get(key) and trl.get(key)}
        if ours.get("gold_reward") is not None and trl.get("gold_reward") is not None:
            cells["gold_reward"] = f"{ours['gold_reward'] - trl['gold_reward']:+.3f}"
        lines.append(row("ours / trl", cells))
    if start is None:
        lines.append("\nGold reward: not reported (random-init models, nothing trained).")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("tiny", "small"), nargs="+", default=["tiny"])
    parser.add_argument("--sides", choices=SIDES, nargs="+", default=list(SIDES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64, help="prompts per update (one response each)")
    parser.add_argument("--mini-batches", type=int, default=2)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--missing-eos-penalty", type=float, default=1.0)
    parser.add_argument("--eval-samples", type=int, default=8, help="samples per held-out prompt")
    parser.add_argument("--recipe", choices=list(RECIPES), default="matched")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads, every process")
    parser.add_argument("--work", type=Path, help="keep the set-up here and reuse it (default: a temp dir)")
    parser.add_argument(
        "--setup-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for the tiny set-up's pipeline config, e.g. stages.sft.max_steps=50",
    )
    parser.add_argument("--json", type=Path, help="also write every run and the medians here")
    parser.add_argument("--worker", choices=["ours", "setup", "start"], help=argparse.SUPPRESS)
    parser.add_argument("--json-args", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
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
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
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
            models = Models(**spawn(worker_command("setup", setup, work / f"{model}-setup.json"), "set-up"))
            print(
                f"{model}: set-up {models.setup_s:.0f} s ({'reused' if not models.setup_s else 'built'})",
                file=sys.stderr,
            )
            runs: dict[str, list[dict[str, Any]]] = {side: [] for side in args.sides}
            for repeat, seed in enumerate(seeds):  # interleaved: load drift hits both sides alike
                for side in args.sides:
                    each = Settings(**{**asdict(settings), "seed": seed})
                    runs[side].append(run_side(side, models, each, trl_python))
                    print(
                        f"{model} repeat {repeat + 1}/{args.repeats} {side}: "
                        f"{runs[side][-1]['median_seconds_per_update']:.3f} s/update, "
                        f"gold {runs[side][-1].get('gold_reward')}",
                        file=sys.stderr,
                    )
            medians = {side: summarize_runs(side_runs) for side, side_runs in runs.items()}
            start = None
            if models.gold:  # the SFT start sampled as the trained policies are
                payload = {"models": asdict(models), "settings": asdict(settings), "seeds": seeds}
                start = spawn(worker_command("start", payload, work / "start.json"), "SFT start evaluation")
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
