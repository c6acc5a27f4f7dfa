"""PPO baseline: trl 1.12.0's `trl.experimental.ppo.PPOTrainer` (the last TRL release with one), timed.

Runs with the python of the venv that `bench/trl_venv.py` builds (trl 1.12.0 with the same torch and model
libraries as the project), never the project's own: that venv has no `rlhf` installed, so only the
standard-library `rlhf.data.synthetic` is imported from the repository, for the gold reward.

    python bench/trl_venv.py    # prints the venv's python: PY
    PY bench/trl_ppo_baseline.py --policy SFT_DIR --reward RM_DIR --prompts train.jsonl \
        --eval-prompts eval_prompts.jsonl --updates 4 --batch-size 16 --mini-batches 2 --ppo-epochs 2 \
        --max-new-tokens 12 --threads 2 --out trl_ppo.json

One update is one iteration of PPOTrainer.train's loop: a rollout of `--batch-size` prompts (sampled
responses, then reference, value and reward forwards), then `--ppo-epochs` passes over the rollout in
`--mini-batches` minibatches, one optimizer step each. It is timed between consecutive `on_step_end`
callbacks (the first from `on_train_begin`): trl 1.12 fires `on_step_end` exactly once per update, after the
epochs and the learning-rate step. Then the trained policy samples the eval prompts and the samples are scored
with the task's gold reward. fp32 throughout, on the device accelerate picks (the CPU without CUDA).

What trl 1.12 does per update, for a fair comparison: one `generate` over the rollout batch (old log-probs
come from its scores, no separate policy forward; it stops once every response has hit EOS, so responses
can be shorter than `--max-new-tokens`), one no-grad forward each of the reference, the value model and the
reward model over prompt + response, then ppo_epochs * mini_batches optimizer steps, each a forward and
backward of policy and value model on one minibatch. It never clips gradients, and the learning rate steps
once per update. `peak_rss_mib` is the process's peak (libraries, the four models, training);
`peak_rss_before_train_mib` is the same figure just before training starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rlhf.data.synthetic import gold_reward  # noqa: E402 - stdlib only; the venv has no rlhf installed

Messages = list[dict[str, str]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", type=Path, required=True, help="HF causal LM dir (the SFT policy)")
    parser.add_argument("--reward", type=Path, required=True, help="HF sequence-classification dir, 1 label")
    parser.add_argument("--prompts", type=Path, required=True, help="training prompts, JSONL")
    parser.add_argument("--eval-prompts", type=Path, required=True, help="held-out prompts, JSONL")
    parser.add_argument("--updates", type=int, default=10, help="PPO updates (rollout + epochs)")
    parser.add_argument("--batch-size", type=int, default=64, help="rollout batch per update")
    parser.add_argument("--mini-batches", type=int, default=1, help="minibatches per PPO epoch")
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="response length")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--learning-rate", type=float, default=1e-6)
    parser.add_argument("--adam-epsilon", type=float, default=1e-8, help="AdamW eps (trl's default 1e-8)")
    parser.add_argument(
        "--lr-scheduler", default="linear", help="per update, to 0 at the last (trl's default)"
    )
    parser.add_argument("--missing-eos-penalty", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="eval samples per prompt")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = parser.parse_args(argv)
    if args.batch_size % args.mini_batches:
        parser.error("--batch-size must be a multiple of --mini-batches")
    return args


def load_prompts(path: Path) -> list[Messages]:
    """Prompts from JSONL rows `{"prompt": [messages]}` or `{"prompt": "text"}` (other keys ignored)."""
    prompts: list[Messages] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        prompt = json.loads(line).get("prompt")
        if isinstance(prompt, str):
            prompts.append([{"role": "user", "content": prompt}])
        elif isinstance(prompt, list) and prompt:
            prompts.append(prompt)
        else:
            raise ValueError(f"{path}:{number}: expected key 'prompt' with text or a list of messages")
    return prompts


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Messages) -> list[int]:
    """Prompt ids as the project encodes them: the chat template with the generation marker, no extra specials."""
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def last_user_text(prompt: Messages) -> str:
    """The last user turn: what the gold reward scores against."""
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


class UpdateTimer(TrainerCallback):
    """Wall seconds of each PPO update and trl's per-update metrics.

    trl 1.12's PPOTrainer.train calls `on_train_begin` once before its loop and `on_step_end` once at the end
    of every update (after the rollout, all PPO epochs and the scheduler step), and `on_log` once per update.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.logs: list[dict[str, float]] = []
        self._last = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if logs:
            self.logs.append(dict(logs))


def load_models(
    args: argparse.Namespace,
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel, PreTrainedModel, PreTrainedModel, PreTrainedModel]:
    """Tokenizer (left-padding), trainable policy, frozen reference, frozen reward model, trainable value model.

    Reference and value model are fresh loads of the policy and the reward model: independent copies.
    """
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(f"{args.policy}: the tokenizer needs a PAD token distinct from EOS")
    fp32 = {"dtype": torch.float32}
    policy = AutoModelForCausalLM.from_pretrained(args.policy, **fp32)
    ref = AutoModelForCausalLM.from_pretrained(args.policy, **fp32)
    reward = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, **fp32)
    value = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, **fp32)
    for frozen in (ref, reward):
        frozen.eval().requires_grad_(False)
    return tokenizer, policy, ref, reward, value


@torch.no_grad()
def evaluate(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Messages],
    args: argparse.Namespace,
    batch_size: int = 64,
) -> dict[str, float]:
    """Sample the policy on the prompts (plain sampling at the training temperature) and score the samples."""
    policy.eval()
    eos = tokenizer.eos_token_id
    rows = [p for p in prompts for _ in range(args.samples_per_prompt)]
    torch.manual_seed(args.seed)
    golds: list[float] = []
    ended: list[bool] = []
    lengths: list[int] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(policy.device)
        out = policy.generate(
            **enc,
            do_sample=True,
            temperature=args.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=args.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
        for prompt, row in zip(batch, out[:, enc["input_ids"].shape[1] :].tolist(), strict=True):
            stop = eos in row
            tokens = row[: row.index(eos)] if stop else row
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            golds.append(gold_reward(last_user_text(prompt), text))
            ended.append(stop)
            lengths.append(len(tokens))
    return {
        "gold_reward": statistics.fmean(golds),
        "eos_share": statistics.fmean(ended),
        "response_tokens": statistics.fmean(lengths),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we know it is experimental: that is the point
    import trl
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    # python, numpy and torch: trl 1.12's PPOTrainer seeds only torch, but shuffles minibatches with numpy
    transformers.set_seed(args.seed)
    tokenizer, policy, ref, reward, value = load_models(args)
    train_prompts = load_prompts(args.prompts)
    eval_prompts = load_prompts(args.eval_prompts)
    if len(train_prompts) < args.batch_size:
        raise ValueError(f"{args.prompts}: {len(train_prompts)} prompts, fewer than --batch-size")

    def dataset(prompts: list[Messages]) -> Dataset:
        return Dataset.from_dict({"input_ids": [encode_prompt(tokenizer, p) for p in prompts]})

    timer = UpdateTimer()
    with tempfile.TemporaryDirectory(prefix="trl-ppo-") as output_dir:
        config = PPOConfig(
            output_dir=output_dir,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            seed=args.seed,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            learning_rate=args.learning_rate,
            adam_epsilon=args.adam_epsilon,
            lr_scheduler_type=args.lr_scheduler,
            # rollout batch B = per_device_train_batch_size * gradient_accumulation_steps; with no accumulation
            # each of the M minibatches of B / M rollouts is one micro-batch and one optimizer step.
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1,
            num_mini_batches=args.mini_batches,
            num_ppo_epochs=args.ppo_epochs,
            total_episodes=args.updates * args.batch_size,
            local_rollout_forward_batch_size=args.batch_size,  # the whole rollout in one generate / forward
            response_length=args.max_new_tokens,
            stop_token="eos",
            temperature=args.temperature,
            kl_coef=args.kl_coef,
            missing_eos_penalty=args.missing_eos_penalty,
            num_sample_generations=0,  # no debugging generations inside the timed loop
        )
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref,
            reward_model=reward,
            value_model=value,
            train_dataset=dataset(train_prompts),
            eval_dataset=dataset(eval_prompts),
            callbacks=[timer],
        )
        loaded_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # models and libraries
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        cuda_peak_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        trained = trainer.accelerator.unwrap_model(trainer.model).policy
        device = str(trained.device)

    if len(timer.seconds) != args.updates:
        raise RuntimeError(f"expected {args.updates} updates, timed {len(timer.seconds)}")
    scores = evaluate(trained, tokenizer, eval_prompts, args)
    settings = {
        key: str(value.resolve()) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key != "out"
    }
    settings |= {
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "mini_batch_size": args.batch_size // args.mini_batches,
        "optimizer_steps_per_update": args.ppo_epochs * args.mini_batches,
        "optimizer": getattr(config.optim, "value", str(config.optim)),
        "gradient_clipping": None,  # trl 1.12's PPO loop never clips: max_grad_norm is unused
        "policy_parameters": sum(p.numel() for p in trained.parameters()),
        "num_eval_prompts": len(eval_prompts),
        "sampling": "top_k=0, top_p=1.0 (plain sampling at the temperature), in training and evaluation",
    }
    result = {
        "trl_version": trl.__version__,
        "seconds_per_update": timer.seconds,
        "median_seconds_per_update": statistics.median(timer.seconds),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "peak_rss_before_train_mib": round(loaded_rss_mib, 1),
        "cuda_peak_mib": None if cuda_peak_mib is None else round(cuda_peak_mib, 1),
        **scores,
        "updates": len(timer.seconds),
        "settings": settings,
        "trl_log": [
            {k: v for k, v in log.items() if isinstance(v, int | float) and math.isfinite(v)}
            for log in timer.logs
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k not in ("settings", "trl_log")}, indent=2))


if __name__ == "__main__":
    main()
