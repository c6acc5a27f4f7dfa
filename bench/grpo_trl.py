"""One GRPO update, timed, and the policy it trains: ours (`rlhf.ppo.PPOTrainer`, `algorithm: grpo`) against
TRL 1.16's `GRPOTrainer`, both from the quickstart's SFT policy, on the task's verifiable gold reward.

    python bench/grpo_trl.py                                             # 30 updates, 3 runs per side
    python bench/grpo_trl.py --work /tmp/ppo-bench --json grpo_trl.json  # keep (and reuse) the set-up
    python bench/grpo_trl.py --updates 3 --repeats 1 --threads 1         # a smoke test

The measured half of issue 17's "build on TRL's GRPOTrainer where it fits our stage contract". The start is
bench/ppo_update.py's tiny set-up (the quickstart's SFT policy, trained once per `--work` directory by its
set-up worker, so one work directory serves both benches); both sides train on the task's SFT prompts and
are scored on its held-out prompts. The reward is `rlhf.rewards:gold` on both: ours names it in `rewards:`,
TRL gets it through `gold_text`, which hands TRL's conversational completions (message lists) to it as text.
Runs, repeats and the table are bench/policy_runs.py's (each (side, repeat) in a process of its own, sides
alternating; per run the median over updates 2..N, then the median over runs; ratios ours / TRL).

One update: `--prompts` prompts x `--group` responses (TRL's `num_generations`), then `--iterations` passes
(ours' `ppo_epochs`, TRL's `num_iterations`) in `--mini-batches` minibatches of (prompts x group) /
mini-batches responses, one optimizer step each (TRL: `per_device_train_batch_size` = that,
`steps_per_generation` = mini-batches, `gradient_accumulation_steps` 1; an update is mini-batches x
iterations of its optimizer steps, timed between its `on_step_end` callbacks). Matched: max new tokens,
temperature (plain sampling: top_k 0, top_p 1), group-normalized advantages (std over the group, +1e-4),
the KL to the SFT policy as a loss term with the k3 estimator (`--beta`), ratio clip `--epsilon` on both
sides, per-response mean then mean over responses (ours `loss_aggregation: sequence_mean`, TRL `loss_type:
"grpo"`), learning rate linear to 0 over all optimizer steps without warm-up, AdamW eps 1e-5, gradient norm
clipped to `--max-grad-norm`, dropout off, fp32 (no bf16, no gradient checkpointing), threads. Ours without
its missing-EOS penalty and reward clip (TRL has neither).

Left as they are: each side shuffles the prompts its own way (TRL's RepeatSampler, ours per seed and
update); TRL splits a rollout into its minibatches once and reuses them for every iteration, ours reshuffles
every epoch; TRL's reward function also receives the dataset's other columns (none here: the prompt only);
ours takes the old log-probs from a forward pass after sampling, TRL too unless a rollout is used for one
optimizer step only (`--iterations 1 --mini-batches 1`: it reuses the gradient pass's). The set-up also
trains the quickstart's reward model, unused here.
Training reward: the mean gold of the last update's rollout (ours `score_raw_mean`, TRL's logged `reward`).

Where TRL 1.16's GRPOTrainer does not fit our stage contract (from the installed source,
`trl/trainer/grpo_trainer.py`, `grpo_config.py`, `rloo_trainer.py`; transformers' `trainer.py`):

- Resume. A checkpoint is transformers' `Trainer._save_checkpoint`, written in place as `checkpoint-N` (ours:
  written aside, then renamed), with the optimizer, scheduler and RNG states. GRPOTrainer's `_step` (the
  micro-step counter that decides when to generate) and `_buffered_inputs` (the current rollout's minibatches)
  are set in `__init__` and saved nowhere, so a run resumed from a checkpoint inside a rollout's mini-batches
  x iterations steps samples a fresh rollout there (grpo_trainer.py's own comment in `_prepare_inputs`:
  "self._buffered_inputs=None can occur when resuming from a checkpoint") and its later rollouts fall at other
  steps than the uninterrupted run's: not an exact resume unless save_steps is a multiple of that count
  (whether it is exact then was not tried here).
- Reward models. Loaded by TRL itself from a path (`AutoModelForSequenceClassification`, num_labels 1) or
  passed as models; one with its own tokenizer takes it through `reward_processing_classes` and reads the
  decoded text, re-rendered with that tokenizer's chat template for conversational data (plain prompt +
  completion for plain text), untruncated, `add_special_tokens=False` (ours: the sampled token ids when the
  tokenizers agree, else the text in the reward model's own format, `rlhf.rewards.score`). No normalization by
  a reward model's stored mean/std (ours: `normalize_rewards`); rewards are weighted (`reward_weights`) and
  summed, then normalized per group. A reward function that raises propagates its own exception (no sample
  named); a wrong count is a ValueError naming the function.
- Models and DeepSpeed. The reference model is built by TRL from the policy's path (`create_model_from_path`,
  `beta > 0`), after the policy is loaded, and DeepSpeed comes from TrainingArguments (`deepspeed=`) and the
  Trainer's own accelerator; ours makes the accelerator (our launch's plugin) before any model loads so that
  ZeRO-3 loads policy, reference and reward models partitioned, frozen ones optionally offloaded.
- Metrics. TRL logs per optimizer step through `Trainer.log` (`reward`, `reward_std`, `kl` as a per-token
  mean, `entropy`, `clip_ratio/*`, `completions/*`) to `report_to`; ours are `policy/*` per update through our
  tracker (per-response KL, phase times, tokens/s): a callback would have to rename and regroup them.
- Defaults a stage would have to override: `loss_type` "dapo", `beta` 0.0 (no reference model), `bf16` True
  and `gradient_checkpointing` True (trl's base_config.py), `disable_dropout` False.
- Registry in/out fits: TRL takes a model directory or a loaded model and `save_model` writes one.
- RLOO: trl 1.16 has `RLOOTrainer` (trl/trainer/rloo_trainer.py, not experimental): the leave-one-out baseline
  over each group, the k1 KL summed per response and subtracted from the reward (`beta`, default 0.05),
  optional batch normalization of the advantages (`normalize_advantages`, default off), and a sequence-level
  ratio exp(sum log p - sum old log p), clipped per response, averaged over responses (ours: per-token ratios,
  `token_mean`). Its `_step` and `_buffered_inputs` are GRPOTrainer's, unsaved alike. REINFORCE++: no trainer
  in trl 1.16 (GRPOConfig's `scale_rewards="batch"` normalizes rewards over the batch, but there is no per-
  token return with the KL in the reward nor REINFORCE++'s normalization of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from importlib.metadata import version
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
    held_out,
    measured,
    spawn,
    start_gold,
    summarize_runs,
    timed_stage,
    train_ours,
    update_seconds,
    worker_command,
)

SETUP = REPO / "bench" / "ppo_update.py"  # its set-up worker trains the start
SIDES = ("ours", "trl")
GOLD = "rlhf.rewards:gold"
ADAM_EPS = 1e-5  # rlhf.ppo's AdamW eps (fixed there); TRL is given the same


@dataclass(frozen=True)
class Settings:
    """What both sides run with; `seed` is set per repeat."""

    updates: int
    prompts: int  # prompts per update
    group: int  # responses per prompt
    mini_batches: int
    iterations: int  # passes over each rollout
    max_new_tokens: int
    temperature: float
    beta: float
    epsilon: float
    learning_rate: float
    max_grad_norm: float
    eval_samples: int
    threads: int
    seed: int = 0

    @property
    def responses(self) -> int:
        return self.prompts * self.group


# --------------------------------------------------------------------------------------------------
# Workers: one timed run each, in its own process


def ours_worker(models: Models, settings: Settings) -> dict[str, Any]:
    """`rlhf.ppo.PPOTrainer` with `algorithm: grpo` on the gold reward, then the policy sampled and scored."""
    from rlhf.settings import RewardSource

    s = settings
    rollout = {"max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "samples_per_prompt": s.group,
               "batch_size": s.responses}  # fmt: skip
    ppo = {"prompts_per_update": s.prompts, "ppo_epochs": s.iterations, "num_mini_batches": s.mini_batches,
           "kl_coef": s.beta, "kl_estimator": "k3", "kl_penalty": "loss", "loss_aggregation": "sequence_mean",
           "cliprange": s.epsilon, "missing_eos_penalty": None, "reward_clip": None}  # fmt: skip
    cfg = timed_stage("grpo", s.updates, s.learning_rate, s.max_grad_norm, rollout, ppo, precision="fp32",
                      rewards=[RewardSource(function=GOLD)])  # fmt: skip
    outcome, figures = train_ours(cfg, cfg.rewards, [], models, settings)
    return {**figures, "reward_last": outcome.history[-1]["score_raw_mean"]}


def gold_text(prompts: list[Any], completions: list[Any], **fields: Any) -> list[float]:
    """`rlhf.rewards:gold` as TRL calls a reward function: a conversational completion is a list of messages,
    the reply's text is the last one's content."""
    from rlhf.rewards import gold

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return gold(prompts, texts)


def trl_worker(models: Models, settings: Settings) -> dict[str, Any]:
    """TRL's GRPOTrainer from the same start on the same prompts and reward, then the policy sampled and scored."""
    import torch

    torch.set_num_threads(settings.threads)
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhf.eval import load_prompts
    from rlhf.models import load_causal_lm
    from rlhf.settings import ModelSpec

    s = settings
    steps = s.mini_batches * s.iterations  # optimizer steps per update
    ends: list[float] = []
    rewards: list[float] = []

    class Updates(TrainerCallback):
        """The end of each update (its last optimizer step) and the training reward TRL logs."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step % steps == 0:
                ends.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "reward" in logs:
                rewards.append(logs["reward"])

    model, tokenizer = load_causal_lm(ModelSpec(name=models.policy))  # fp32, as ours
    dataset = Dataset.from_list([{"prompt": prompt} for prompt in load_prompts(models.prompts)])
    with tempfile.TemporaryDirectory(prefix="grpo-trl-") as tmp:
        config = GRPOConfig(
            output_dir=tmp,
            max_steps=s.updates * steps,
            per_device_train_batch_size=s.responses // s.mini_batches,
            gradient_accumulation_steps=1,
            steps_per_generation=s.mini_batches,
            num_generations=s.group,
            num_iterations=s.iterations,
            max_completion_length=s.max_new_tokens,
            temperature=s.temperature,
            top_k=0,
            top_p=1.0,
            beta=s.beta,
            epsilon=s.epsilon,
            loss_type="grpo",
            scale_rewards="group",
            learning_rate=s.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            adam_epsilon=ADAM_EPS,
            max_grad_norm=s.max_grad_norm,
            disable_dropout=True,
            gradient_checkpointing=False,
            bf16=False,
            fp16=False,
            seed=s.seed,
            logging_steps=steps,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=[gold_text], args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[Updates()])  # fmt: skip
        with measured() as memory:
            started = time.perf_counter()
            trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    return {
        **update_seconds(started, ends),
        **memory,
        **held_out(policy, tokenizer, models, settings),
        "reward_last": rewards[-1] if rewards else None,
        "device": str(trainer.accelerator.device),
        "policy_parameters": sum(p.numel() for p in policy.parameters()),
    }


def run_worker(kind: str, payload: dict[str, Any]) -> Any:
    """The work of one worker process (heavy imports happen here, never in the launching process)."""
    models, settings = Models(**payload["models"]), Settings(**payload["settings"])
    if kind == "start":
        return start_gold(models, settings, payload["seeds"])
    return {"ours": ours_worker, "trl": trl_worker}[kind](models, settings)


# --------------------------------------------------------------------------------------------------
# Report

COLUMNS = [
    TIME_COLUMN,
    *MEMORY_COLUMNS,
    ("training reward (last update)", "reward_last", ".3f"),
    *GOLD_COLUMNS,
]


def table(
    settings: Settings, medians: dict[str, dict[str, Any]], start: dict[str, float], repeats: int
) -> str:
    """The comparison as bench/policy_runs.py's `comparison_table` shows it, titled with the settings."""
    s, first = settings, next(iter(medians.values()))
    title = (
        f"GRPO update, tiny model ({first['policy_parameters'] / 1e6:.2f}M parameters) on {first['device']}: "
        f"{s.prompts} prompts x {s.group} responses, {s.max_new_tokens} new tokens, {s.iterations} iterations x "
        f"{s.mini_batches} minibatches, beta {s.beta:g}, lr {s.learning_rate:g}, {s.updates} updates, gold "
        f"reward; median of {repeats} runs (each: the median over updates 2..N)"
    )
    labels = {"ours": "ours (rlhf.ppo, grpo)", "trl": f"trl {version('trl')} GRPOTrainer"}
    return comparison_table(title, COLUMNS, medians, labels, start)


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per update")
    parser.add_argument("--group", type=int, default=4, help="responses per prompt (TRL: num_generations)")
    parser.add_argument("--mini-batches", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2, help="ours: ppo_epochs; TRL: num_iterations")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (k3, a loss term)")
    parser.add_argument("--epsilon", type=float, default=0.2, help="ratio clip")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    add_common_arguments(parser, SIDES, ["ours", "trl", "start"])
    args = parser.parse_args(argv)
    if args.group < 2:
        parser.error("--group must be at least 2 (GRPO's baseline is the other responses to the prompt)")
    if (args.prompts * args.group) % args.mini_batches:
        parser.error("--prompts x --group must be a multiple of --mini-batches")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args.worker, json.loads(args.json_args))
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        return 0

    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    seeds = [args.seed + repeat for repeat in range(args.repeats)]
    with tempfile.TemporaryDirectory(prefix="grpo-trl-work-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        setup = {
            "model": "tiny",
            "work": str(work),
            "threads": args.threads,
            "overrides": args.setup_override,
        }
        models = Models(
            **spawn(worker_command(str(SETUP), "setup", setup, work / "tiny-setup.json"), "set-up")
        )
        print(
            f"set-up {models.setup_s:.0f} s ({'reused' if not models.setup_s else 'built'})", file=sys.stderr
        )

        def run(side: str, seed: int) -> dict[str, Any]:
            payload = {"models": asdict(models), "settings": asdict(replace(settings, seed=seed))}
            return spawn(worker_command(__file__, side, payload, work / f"{side}-{seed}.json"), f"{side} run")

        runs = alternating(args.sides, seeds, run, "grpo")
        payload = {"models": asdict(models), "settings": asdict(settings), "seeds": seeds}
        start = spawn(worker_command(__file__, "start", payload, work / "start.json"), "SFT start evaluation")
    medians = {side: summarize_runs(side_runs) for side, side_runs in runs.items()}
    ratios = [ours["median_seconds_per_update"] / trl["median_seconds_per_update"]
              for ours, trl in zip(runs.get("ours", []), runs.get("trl", []), strict=False)]  # fmt: skip
    print("\n" + table(settings, medians, start, args.repeats) + "\n")
    if ratios:
        print(f"time ours / trl per repeat: {', '.join(f'{r:.2f}x' for r in ratios)}")
    if args.json:
        report = {"settings": asdict(settings), "setup": asdict(models), "start": start, "medians": medians,
                  "time_ratio_ours_over_trl": ratios, "runs": runs}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
