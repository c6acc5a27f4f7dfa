"""What the online policy benches share (bench/ppo_update.py, bench/grpo_trl.py): the models both sides start
from, worker processes (one timed run each), our PPOTrainer timed per update, memory around a training, the
held-out evaluation, and the comparison table.

A bench runs each (side, repeat) in a fresh process of its own (`worker_command`, `spawn`), the sides
alternating within each repeat (`alternating`), so peak memory is that run's alone and drift in machine load
hits both sides alike. Heavy imports happen inside the functions a worker calls, never in the launcher: a
child's peak RSS includes its launcher's at the fork.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]
# the figures the table shows as ours over the baseline
RATIOS = ("median_seconds_per_update", "peak_rss_mib", "peak_rss_before_train_mib", "cuda_peak_mib")
# columns of `comparison_table` (title, result key, format) that every side reports
TIME_COLUMN = ("s / update", "median_seconds_per_update", ".3f")
MEMORY_COLUMNS = [
    ("peak RSS MiB", "peak_rss_mib", ",.0f"),
    ("RSS loaded MiB", "peak_rss_before_train_mib", ",.0f"),
    ("CUDA peak MiB", "cuda_peak_mib", ",.0f"),
]
GOLD_COLUMNS = [("gold reward", "gold_reward", ".3f"), ("EOS share", "eos_share", ".2f")]


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


class EvalSettings(Protocol):
    """What the held-out sampling reads from a bench's settings (ppo_update's, grpo_trl's)."""

    max_new_tokens: int
    temperature: float
    eval_samples: int
    threads: int
    seed: int


def start_gold(models: Models, settings: EvalSettings, seeds: list[int]) -> dict[str, float]:
    """Gold reward and EOS share of the SFT start, sampled as the trained policies are (median over seeds)."""
    import torch

    from rlhf.models import load_causal_lm
    from rlhf.settings import ModelSpec

    torch.set_num_threads(settings.threads)
    model, tokenizer = load_causal_lm(ModelSpec(name=models.policy))
    runs = [held_out(model, tokenizer, models, replace(settings, seed=seed)) for seed in seeds]
    return {key: statistics.median(run[key] for run in runs) for key in ("gold_reward", "eos_share")}


def held_out(policy: Any, tokenizer: Any, models: Models, settings: EvalSettings) -> dict[str, float | None]:
    """Gold reward and EOS share of `policy`: `--eval-samples` samples per held-out prompt at the training
    temperature (seed `settings.seed`), scored by the task's programmatic reward; None for random-init models."""
    if not models.gold:
        return {"gold_reward": None, "eos_share": None}
    from rlhf.eval import generate, load_prompts, summarize

    samples = generate(
        policy, tokenizer, load_prompts(models.eval_prompts), eval_spec(settings), settings.seed
    )
    scores = summarize(samples, "synthetic")
    return {"gold_reward": scores["gold_reward"], "eos_share": scores["eos_share"]}


def eval_spec(settings: EvalSettings) -> Any:
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


@contextmanager
def measured() -> Iterator[dict[str, float | None]]:
    """Memory around a training: the process's peak RSS just before it (`loaded`) and after it, and CUDA's
    peak allocation during it (None on a CPU)."""
    import torch

    def rss_peak_mib() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux

    figures: dict[str, float | None] = {"peak_rss_before_train_mib": rss_peak_mib()}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    yield figures
    figures["peak_rss_mib"] = rss_peak_mib()
    figures["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None


def steady_median(seconds: list[float]) -> float:
    """The median time of updates 2..N (update 1 is warm-up)."""
    return statistics.median(seconds[1:] or seconds)


def update_seconds(started: float, ends: list[float]) -> dict[str, Any]:
    """Each update's wall time, from the training's start and the updates' ends, and their `steady_median`."""
    wall = [b - a for a, b in zip([started, *ends], ends, strict=False)]
    return {"seconds_per_update": wall, "median_seconds_per_update": steady_median(wall)}


def timed_stage(algorithm: str, updates: int, learning_rate: float, max_grad_norm: float,
                rollout: dict[str, Any], ppo: dict[str, Any], **stage: Any) -> Any:  # fmt: skip
    """The policy stage config of one timed run of ours: `updates` updates of one optimizer step per minibatch
    (the micro-batch is the minibatch), the learning rate linear to 0 without warm-up, plain sampling (top_k 0,
    top_p 1), no checkpoints, logs or evaluation. `rollout` and `ppo`: the other fields of its RolloutSpec and
    PPOSpec; `stage`: of the stage."""
    from rlhf.settings import PolicyStageConfig, PPOSpec, RolloutSpec

    spec = RolloutSpec(top_k=0, top_p=1.0, **rollout)
    responses = ppo["prompts_per_update"] * spec.samples_per_prompt
    return PolicyStageConfig(
        algorithm=algorithm,
        learning_rate=learning_rate,
        max_steps=updates,
        per_device_train_batch_size=responses // ppo["num_mini_batches"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        save_steps=10**9,
        logging_steps=10**9,
        max_grad_norm=max_grad_norm,
        evaluation=None,
        ppo=PPOSpec(rollout=spec, **ppo),
        **stage,
    )


def train_ours(
    cfg: Any,
    sources: list[Any],
    stats: list[tuple[float, float] | None],
    models: Models,
    settings: EvalSettings,
) -> tuple[Any, dict[str, Any]]:
    """`rlhf.ppo.PPOTrainer` on `cfg` (any online algorithm) with the reward `sources` (reward models' stored
    `stats` in order), built as the policy stage builds it (fp32 weights), timed per update; then the trained
    policy sampled on the held-out prompts. Returns the trainer's outcome and the figures every side reports."""
    import torch

    torch.set_num_threads(settings.threads)
    from rlhf.eval import load_prompt_rows
    from rlhf.models import policy_training
    from rlhf.ppo import PPORun, PPOTrainer, ppo_accelerator
    from rlhf.ppo_models import build_models
    from rlhf.precision import LoadDtypes
    from rlhf.reward_sources import reward_terms, with_models
    from rlhf.settings import ModelSpec

    policy_spec = ModelSpec(name=models.policy)
    accelerator = ppo_accelerator(cfg, "stages.policy")
    terms = reward_terms(sources, stats, "stages.policy")
    value_model = cfg.ppo.value_model if cfg.online_recipe().critic else None
    built = build_models(policy_spec, [s.model for s in sources if s.model is not None],
                         policy_training(policy_spec, None, "policy"), value_model,
                         LoadDtypes("float32", "float32"))  # fmt: skip
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
        with measured() as memory:
            started = time.perf_counter()
            outcome = trainer.train()
    return outcome, {
        **update_seconds(started, ends),
        **memory,
        **held_out(outcome.policy, built.tokenizer, models, settings),
        "device": str(trainer.accelerator.device),
        "policy_parameters": sum(p.numel() for p in outcome.policy.parameters()),
    }


def worker_command(script: str, kind: str, payload: dict[str, Any], out: Path) -> list[str]:
    """`script` (a bench) as a worker of `kind` in a fresh process of the project's python; it writes its JSON
    result to `out`."""
    return [sys.executable, script, "--worker", kind, "--json-args", json.dumps(payload), "--out", str(out)]


def spawn(cmd: list[str], what: str) -> Any:
    """Run a worker that writes its JSON result to the path after `--out`; its log is shown if it fails."""
    out = Path(cmd[cmd.index("--out") + 1])
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"{what} failed (exit {done.returncode})")
    return json.loads(out.read_text(encoding="utf-8"))


def add_common_arguments(parser: argparse.ArgumentParser, sides: tuple[str, ...], workers: list[str]) -> None:
    """The flags every policy bench has: sides, repeats, evaluation samples, seed, threads, the work directory
    and its set-up, the JSON output, and the hidden ones of its worker processes (`workers`: their kinds)."""
    parser.add_argument("--sides", choices=sides, nargs="+", default=list(sides))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-samples", type=int, default=8, help="samples per held-out prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads, every process")
    parser.add_argument("--work", type=Path, help="keep the set-up here and reuse it (default: a temp dir)")
    parser.add_argument(
        "--setup-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for the tiny set-up's pipeline config (bench/ppo_update.py's), e.g. stages.sft.max_steps=50",
    )
    parser.add_argument("--json", type=Path, help="also write every run and the medians here")
    parser.add_argument("--worker", choices=workers, help=argparse.SUPPRESS)
    parser.add_argument("--json-args", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)


def alternating(sides: list[str], seeds: list[int], run: Callable[[str, int], dict[str, Any]],
                label: str) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """`run(side, seed)` once per side and seed, the sides alternating within each repeat so that drift in
    machine load hits both alike; one line per run on stderr."""
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for repeat, seed in enumerate(seeds):
        for side in sides:
            result = run(side, seed)
            runs[side].append(result)
            print(f"{label} repeat {repeat + 1}/{len(seeds)} {side}: {result['median_seconds_per_update']:.3f} "
                  f"s/update, gold {result.get('gold_reward')}", file=sys.stderr)  # fmt: skip
    return runs


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


def comparison_table(title: str, columns: list[tuple[str, str, str]], medians: dict[str, dict[str, Any]],
                     labels: dict[str, str], start: dict[str, float] | None) -> str:  # fmt: skip
    """One markdown table: the SFT start's gold reward (if given), a row per side (named by `labels`), and,
    with both sides of `labels` measured, the first's over the second's figures of `RATIOS` (gold: the
    difference). The CUDA column only where a side has a figure in it."""
    on_gpu = any(m.get("cuda_peak_mib") for m in medians.values())
    columns = [c for c in columns if c[1] != "cuda_peak_mib" or on_gpu]

    def row(name: str, cells: dict[str, str]) -> str:
        return "| " + " | ".join([name, *(cells.get(key, "—") for _, key, _ in columns)]) + " |"

    def shown(m: dict[str, Any]) -> dict[str, str]:
        return {key: format(m[key], fmt) for _, key, fmt in columns if m.get(key) is not None}

    lines = [
        title,
        "",
        "| implementation | " + " | ".join(heading for heading, _, _ in columns) + " |",
        "|---" + "|---:" * len(columns) + "|",
    ]
    if start is not None:
        lines.append(row("SFT start", shown(start)))
    for side, m in medians.items():
        lines.append(row(labels[side], shown(m)))
    if set(medians) == set(labels):
        ours, base = (medians[side] for side in labels)
        cells = {key: f"{ours[key] / base[key]:.2f}x" for key in RATIOS if ours.get(key) and base.get(key)}
        if ours.get("gold_reward") is not None and base.get("gold_reward") is not None:
            cells["gold_reward"] = f"{ours['gold_reward'] - base['gold_reward']:+.3f}"
        lines.append(row(" / ".join(labels), cells))
    return "\n".join(lines)
