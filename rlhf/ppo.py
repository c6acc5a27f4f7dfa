"""PPO for language models, the InstructGPT recipe, and its critic-free siblings (GRPO, RLOO, REINFORCE++), in
one module: read it top to bottom.

    models -> rollout (sample, score, log-probs, values) -> rewards (KL penalty + score) and advantages (GAE)
    -> losses (clipped policy and value) -> update (epochs over minibatches) -> weight sync -> metrics -> checkpoint

The critic-free algorithms (`algorithm: grpo | rloo | reinforce_pp`) run the same loop without a value model:
several responses per prompt, advantages from the scores alone (`rlhf.critic_free_math`, which says which paper
each follows), the KL in the reward or as a loss term; rollout, clipping, checkpoints, resume, DeepSpeed and
metrics (logged as `policy/*`) are the ones PPO uses. The reward is a weighted sum of reward models and Python
reward functions (`rlhf.reward_sources`).

Responses come from a rollout engine (`rlhf.rollout`: generate() on the trained model, or vLLM synced after each
update); the old log-probs are always the trainer's own, a vLLM engine's only measured against them.

The arithmetic of rewards, advantages and losses is in `rlhf.ppo_math`, small pure functions; this module is
the recipe around them.

TRL removed its PPOTrainer in 2026, so this is our own code on torch, transformers and accelerate (DeepSpeed
underneath when configured). The details that decide whether PPO works for language models are marked `[n]`
where they live:

    [1] reward and value read prompt + response; the score sits at the last response token
    [2] a pad distinct from EOS; left-padded prompts with position ids from the attention mask
    [3] logits divided by the sampling temperature before every log-prob (rollout, reference, update)
    [4] dropout off in policy, reference, reward and value models
    [5] the value model initialized from the reward model; a fresh value head at 0
    [6] reward-model scores normalized (mean 0, std 1) with statistics stored with the reward model
    [7] responses truncated at their first EOS before scoring; a penalty when there is none
    [8] per-token KL penalty -kl_coef * (log p - log p_ref), kl_coef fixed or adaptive toward a target KL
    [9] log-probs and values masked after EOS; advantages whitened over valid tokens only
    [10] GAE (gamma 1, lambda 0.95); returns = advantages + values
    [11] clipped ratio (0.2), clipped value (0.2), value-loss coefficient 0.1, gradient-norm clipping
    [12] rollout -> minibatches -> micro-batches, reshuffled every PPO epoch
    [13] learning rate decayed to zero; each process its own seed
    [14] diagnostics: approx KL, clip fraction, entropy, explained variance, raw vs shaped score, no-EOS share

Tensor shapes, given in every docstring as `name: [shape]` (`[]` a scalar): B responses (a rollout, or the
rows of a micro-batch), P the (left-padded) prompt width, T the (right-padded) response width, L = P + T the
whole sequence, V the vocabulary. Per-token tensors are [B, T] over response positions; `mask: [B, T]` marks a
response's tokens up to and including its EOS [9]; `attention: [B, L]` marks the real tokens of prompt and
response.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rlhf.checkpoints import (
    CHECKPOINT_PREFIX,
    last_complete_checkpoint,
    prune_checkpoints,
    write_aside_then_rename,
)
from rlhf.critic_free_math import critic_free_advantages
from rlhf.distributed import make_accelerator
from rlhf.errors import StageError
from rlhf.eval import PromptRow, Sample
from rlhf.policy_forward import reference_logprobs, response_forward
from rlhf.ppo_math import (
    KLController,
    aggregate,
    explained_variance,
    gae,
    kl_estimate,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    shape_scores,
    truncated_is_weights,
    value_loss,
)
from rlhf.ppo_models import PolicyAndValue, PPOModels
from rlhf.precision import resolve_precision
from rlhf.progress import stage_progress
from rlhf.reward_sources import RewardTerm, combined, metrics_of, raw_matrix
from rlhf.rollout import (
    RolloutEngine,
    collate,
    engine_logprobs,
    generation_ready,
    make_engine,
    policy_weights,
    recorded_columns,
    records_old_logprobs,
)
from rlhf.settings import PolicyStageConfig, ppo_batches
from rlhf.sharding import frozen_engine, log_held_shares

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


# ==================================================================================================
# Rollout: sample responses, score them, and the forward passes that give log-probs and values


@dataclass
class Rollout:
    """One update's experience: what the rollout measured, then what `PPOTrainer.advantages` adds."""

    ids: Tensor  # [B, L] prompt + response
    attention: Tensor  # [B, L]
    context: int  # P: the response starts here
    mask: Tensor  # [B, T]
    logprobs: Tensor  # [B, T] the sampling policy's
    ref_logprobs: Tensor  # [B, T]
    values: Tensor  # [B, T] (0 without a critic)
    raw_scores: Tensor  # [B, K] each reward term's raw value (`rlhf.reward_sources`)
    scores: Tensor  # [B] combined and shaped (`shape_scores`)
    ended: Tensor  # [B] bool: the response ended with EOS
    engine_logprobs: Tensor | None  # [B, T] the rollout engine's own (vLLM), for the mismatch and `tis_cap`
    kl: Tensor = field(init=False)  # [B, T]
    rewards: Tensor = field(init=False)  # [B, T]
    advantages: Tensor = field(init=False)  # [B, T]
    returns: Tensor = field(init=False)  # [B, T]


def ppo_accelerator(
    cfg: PolicyStageConfig, config_key: str, deepspeed_plugin: Any = None, mixed_precision: str = "no"
) -> Accelerator:
    """The accelerator one PPO training runs on (DeepSpeed underneath with a plugin). Made before any model
    loads: at ZeRO-3 it is what makes transformers load each model partitioned."""
    accumulation = ppo_batches(cfg, config_key).accumulation
    return make_accelerator(deepspeed_plugin, mixed_precision=mixed_precision,
                            gradient_accumulation_steps=accumulation)  # fmt: skip


# ==================================================================================================
# The update and the training loop


@dataclass
class Timer:
    """Seconds spent per phase of an update."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


@dataclass
class PPOState:
    """Progress that must survive a restart beside the weights, optimizer, scheduler and RNG states."""

    update: int = 0
    # per reward term: the (mean, std) its raw values are normalized by; None: taken as they are
    reward_stats: list[tuple[float, float] | None] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  # one row per update, for the run report

    def state_dict(self) -> dict[str, Any]:
        return {"update": self.update, "reward_stats": self.reward_stats, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.update = state["update"]
        self.reward_stats = [tuple(stats) if stats else None for stats in state["reward_stats"]]
        self.history = list(state.get("history", []))


@dataclass
class PPORun:
    """What one PPO training needs from the stage."""

    cfg: PolicyStageConfig
    models: PPOModels
    rewards: list[RewardTerm]  # reward models' in the order of `models.rewards`; their stats as stored
    prompts: list[PromptRow]
    checkpoint_dir: Path
    seed: int
    config_key: str  # the stage's section, e.g. `stages.policy.ppo`, for errors in its settings
    accelerator: Accelerator  # from `ppo_accelerator`, made before the models load (ZeRO-3 loads partitioned)
    log_metrics: Callable[[dict[str, float], int], None] = lambda metrics, step: None
    offload_frozen_models: bool = False  # ZeRO-3: the reference's and reward model's shards in CPU memory


@dataclass
class PPOOutcome:
    policy: PreTrainedModel  # unwrapped (with its adapters, when LoRA)
    history: list[dict[str, float]]
    updates: int
    resumed_from: int


class PPOTrainer:
    """Rollouts and updates, with checkpoints and exact resume. `train()` is the whole algorithm; the methods
    after it are its steps, in the order one update runs them."""

    def __init__(self, run: PPORun) -> None:
        self.run, self.cfg, self.spec, self.models = run, run.cfg, run.cfg.ppo, run.models
        self.recipe = run.cfg.online_recipe()
        self.batches = batches = ppo_batches(self.cfg, self.run.config_key)
        self.accelerator = run.accelerator
        self.world = self.accelerator.num_processes
        per_update = self.spec.prompts_per_update * self.world
        for_the_epochs = max(1, math.ceil(self.cfg.num_train_epochs * len(run.prompts) / per_update))
        self.total_updates = self.cfg.max_steps if self.cfg.max_steps > 0 else for_the_epochs
        model = PolicyAndValue(self.models.policy, self.models.value, self.recipe.critic)
        trainable = [p for p in model.parameters() if p.requires_grad]
        # fused: one kernel per step instead of one per tensor (about 10% of a 40M model's update on a CPU);
        # DeepSpeed brings its own optimizer handling, so there the plain one.
        optimizer = torch.optim.AdamW(trainable, lr=self.cfg.learning_rate, eps=1e-5,
                                      weight_decay=self.cfg.weight_decay,
                                      fused=self.accelerator.state.deepspeed_plugin is None)  # fmt: skip
        self.scheduler = self._schedule(optimizer)
        if plugin := self.accelerator.state.deepspeed_plugin:  # what a Trainer would fill in for "auto"
            plugin.deepspeed_config.update(train_micro_batch_size_per_gpu=batches.micro,
                                           gradient_accumulation_steps=batches.accumulation,
                                           train_batch_size=batches.micro * batches.accumulation * self.world,
                                           gradient_clipping=self.cfg.max_grad_norm)  # fmt: skip
            # ZeRO-3: gather the full weights when the policy is saved (`save_policy`)
            plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        several = len(self.models.rewards) > 1
        rewards = {
            f"reward model{f' {i}' if several else ''}": r.model for i, r in enumerate(self.models.rewards)
        }
        log_held_shares(self.cfg.algorithm, {"trained policy": model.policy, "value": model.value,
                                             "reference": self.models.reference, **rewards})  # fmt: skip
        # the frozen models as the rollout calls them: on the device, or ZeRO-3 engines of their own
        for reward in self.models.rewards:
            reward.model = frozen_engine(reward.model, self.accelerator, run.offload_frozen_models)
        reference = self.models.reference
        reference = reference and frozen_engine(reference, self.accelerator, run.offload_frozen_models)
        self.models = dataclasses.replace(self.models, reference=reference)
        self.kl_controller = KLController(self.spec.kl_coef, self.spec.target_kl, self.spec.kl_horizon)
        self.state = PPOState(reward_stats=[term.stats if self.spec.normalize_rewards else None
                                            for term in run.rewards])  # fmt: skip
        self.accelerator.register_for_checkpointing(self.scheduler, self.kl_controller, self.state)

    def _schedule(self, optimizer: torch.optim.Optimizer) -> Any:
        """[13] The learning rate over all optimizer steps (linear to zero by default), warmup as set."""
        from transformers import get_scheduler

        steps = self.total_updates * self.spec.ppo_epochs * self.spec.num_mini_batches
        warmup = self.cfg.warmup_steps
        warmup = int(warmup * steps) if warmup < 1 else int(warmup)
        return get_scheduler(self.cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                             num_training_steps=steps)  # fmt: skip

    # ----------------------------------------------------------------------------------------------
    # The loop

    def train(self) -> PPOOutcome:
        """For each update: rollout -> advantages -> PPO epochs -> metrics -> (checkpoint)."""
        self.run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        resumed_from = self.resume()
        if not resumed_from:
            torch.manual_seed(self.run.seed + self.accelerator.process_index)  # [13] a seed per process
        self.engine = self._start_engine()  # after the resume: it starts from the checkpoint's weights
        log.info("%s: %d updates of %d responses per process (%d processes), %d PPO epochs x %d minibatches",
                 self.cfg.algorithm, self.total_updates, self.batches.rollout, self.world, self.spec.ppo_epochs,
                 self.spec.num_mini_batches)  # fmt: skip
        bar = stage_progress(
            self.cfg.algorithm, "updates", self.total_updates, self.accelerator.is_main_process
        )
        while self.state.update < self.total_updates:
            timer = Timer()
            batch, samples = self.rollout(self.prompts_for(self.state.update), timer)
            self.advantages(batch)
            train_stats = self.update(batch, timer)
            self.sync_engine(self.state.update + 1, timer)
            metrics = self.metrics(batch, samples, train_stats, timer)
            self.kl_controller.update(metrics["kl"], len(samples) * self.world)
            self.state.update += 1
            update = self.state.update
            self.state.history.append({"update": update, **metrics})
            self.run.log_metrics({f"policy/{k}": v for k, v in metrics.items()}, update)
            bar.advance(update, {"score": metrics["score_raw_mean"], "KL": metrics["kl"]})
            if update % self.cfg.logging_steps == 0 or update in (1, self.total_updates):
                critic = (f", value loss {metrics['value_loss']:.4f}, expl. var {metrics['explained_variance']:.2f}"
                          if self.recipe.critic else "")  # fmt: skip
                log.info(
                    "%s update %d/%d: score %.3f, KL %.3f, entropy %.3f, clipfrac %.3f, approx KL %.4f%s, "
                    "length %.1f, no EOS %.2f, %.0f+%.0f tok/s",
                    self.cfg.algorithm, update, self.total_updates, metrics["score_raw_mean"], metrics["kl"],
                    metrics["entropy"], metrics["clipfrac"], metrics["approx_kl"], critic,
                    metrics["response_tokens"], metrics["no_eos_share"],
                    metrics["rollout_tokens_per_s"], metrics["train_tokens_per_s"],
                )  # fmt: skip
            if update % self.cfg.save_steps == 0 and update < self.total_updates:
                self.save_checkpoint()
        bar.close()
        self.engine.close()
        return PPOOutcome(self._policy(), self.state.history, self.state.update, resumed_from)

    def _policy(self) -> PreTrainedModel:
        """The trained policy itself (with its adapters, when LoRA), out of any DeepSpeed wrapper."""
        return self.accelerator.unwrap_model(self.model).policy

    # ----------------------------------------------------------------------------------------------
    # Rollout engine

    def _start_engine(self) -> RolloutEngine:
        """The configured engine, holding the current policy (version = updates done so far)."""
        workdir = self.run.checkpoint_dir.parent / "rollout-engine" / f"rank{self.accelerator.process_index}"
        trained, precision = self.accelerator.unwrap_model(self.model), resolve_precision(self.cfg.precision)
        record = records_old_logprobs(self.spec.rollout, precision, trained.value is not None)
        engine = make_engine(self.spec.rollout, self._policy(), self.models.tokenizer, self._generation_policy,
                             precision, workdir, record, trained.value_head)  # fmt: skip
        engine.sync(lambda: policy_weights(self._policy()), self.state.update)
        return engine

    @contextmanager
    def _generation_policy(self) -> Iterator[PreTrainedModel]:
        """The policy as the hf engine samples with it: gathered, in the precision the training forward runs
        (so that log-probs recorded while sampling are the ones a training forward computes)."""
        with generation_ready(self.accelerator, self.model) as unwrapped, self.accelerator.autocast():
            yield unwrapped.policy

    def sync_engine(self, version: int, timer: Timer) -> None:
        """The engine takes the trainer's weights (every process: under ZeRO-3 reading them is a gather)."""
        with timer.phase("weight_sync"):
            self.engine.sync(lambda: policy_weights(self._policy()), version)

    # ----------------------------------------------------------------------------------------------
    # Rollout

    def prompts_for(self, update: int) -> list[PromptRow]:
        """This process's prompts of an update: a fixed function of the seed and the update number, so a
        resumed run draws exactly what the uninterrupted one did. Each pass over the prompts is reshuffled."""
        n, per_update = len(self.run.prompts), self.spec.prompts_per_update
        start = (update * self.world + self.accelerator.process_index) * per_update
        # each pass's shuffled order, from its own generator (the global RNG is the sampler's)
        orders: dict[int, list[int]] = {}
        chosen = []
        for position in range(start, start + per_update):
            epoch, index = divmod(position, n)
            if epoch not in orders:
                generator = torch.Generator().manual_seed(self.run.seed * 100_003 + epoch)
                orders[epoch] = torch.randperm(n, generator=generator).tolist()
            chosen.append(self.run.prompts[orders[epoch][index]])
        return chosen

    @torch.no_grad()
    def rollout(self, prompts: list[PromptRow], timer: Timer) -> tuple[Rollout, list[Sample]]:
        """Sample responses (`samples_per_prompt` consecutive ones per prompt: a group), score them, and
        compute the old log-probs (unless the engine recorded them), reference log-probs and values."""
        models, spec, device = self.models, self.spec, self.accelerator.device
        temperature, chunk = spec.rollout.temperature, spec.rollout.batch_size
        with timer.phase("generation"):
            drawn = self.engine.sample([row.messages for row in prompts], seed=self._rollout_seed())
        if drawn.version != self.state.update:
            raise StageError(f"ppo: the rollout engine sampled policy version {drawn.version}, but the trainer "
                             f"is at update {self.state.update}: its weights were not synced")  # fmt: skip
        samples, policy = drawn.samples, self._policy()
        with timer.phase("scoring"):
            rows = [row for row in prompts for _ in range(spec.rollout.samples_per_prompt)]
            raw = raw_matrix(self.run.rewards, samples, rows).to(device)
            ids, attention, context = collate(samples, models.tokenizer.pad_token_id, device)
            parts = []
            for start in range(0, len(samples), chunk):
                part = slice(start, start + chunk)
                with self.accelerator.autocast():
                    ref = reference_logprobs(models, policy, ids[part], attention[part], context, temperature)
                    if drawn.recorded is None:
                        logp, _, value = response_forward(self.model, ids[part], attention[part], context,
                                                          temperature)  # fmt: skip
                        parts.append((ref, logp, torch.zeros_like(logp) if value is None else value))
                    else:
                        parts.append((ref,))
        mask = attention[:, context:].float()
        # [9] nothing counted past EOS
        columns = [torch.cat(column) * mask for column in zip(*parts, strict=True)]
        ref_logprobs = columns[0]
        logprobs, values = columns[1:] if drawn.recorded is None else recorded_columns(drawn.recorded, mask)
        ended = torch.tensor([s.ended_with_eos for s in samples], device=device)
        if self.spec.normalize_rewards:
            self._first_rollout_stats(raw)
        batch = Rollout(
            ids=ids,
            attention=attention,
            context=context,
            mask=mask,
            logprobs=logprobs,
            ref_logprobs=ref_logprobs,
            values=values,
            raw_scores=raw,
            scores=shape_scores(combined(raw, self.run.rewards, self.state.reward_stats), ended, spec),
            ended=ended,
            engine_logprobs=engine_logprobs(drawn, mask),
        )
        return batch, samples

    def _rollout_seed(self) -> int:
        """The seed of this process's rollout of the current update (engines that seed each sample: vllm);
        fixed by the run's seed, update and rank, so a resumed run draws what the uninterrupted one did."""
        return (self.run.seed * 100_003 + self.state.update) * self.world + self.accelerator.process_index

    def _first_rollout_stats(self, raw: Tensor) -> None:
        """[6] A reward model without stored statistics is normalized by its scores of the first rollout (the
        SFT policy's own outputs), over every process, kept for the rest of the run (checkpointed).
        raw: [B, K]."""
        for index, term in enumerate(self.run.rewards):
            if term.model is None or self.state.reward_stats[index] is not None:
                continue
            everything = self.accelerator.gather(raw[:, index].contiguous())
            self.state.reward_stats[index] = (float(everything.mean()), float(everything.std()))
            log.info("%s: reward %s stores no statistics; normalizing with the SFT policy's: %.3f +- %.3f",
                     self.cfg.algorithm, term.label, *self.state.reward_stats[index])  # fmt: skip

    # ----------------------------------------------------------------------------------------------
    # Rewards and advantages

    def advantages(self, batch: Rollout) -> None:
        """Rewards with the KL penalty (where the KL is in the reward), then advantages, in place on the
        rollout: PPO's GAE over the critic's values and whitening; the critic-free algorithms' from the scores
        of each group or the batch (`critic_free_advantages`)."""
        spec, recipe = self.spec, self.recipe
        batch.kl = kl_estimate(batch.logprobs, batch.ref_logprobs, recipe.kl_estimator) * batch.mask
        kl_coef = self.kl_controller.kl_coef if recipe.kl_penalty != "loss" else 0.0
        batch.rewards = per_token_rewards(batch.kl, batch.scores, batch.mask, kl_coef)
        if spec.whiten_rewards:
            batch.rewards = masked_whiten(batch.rewards, batch.mask, shift_mean=False)
        if not recipe.critic:
            batch.advantages = critic_free_advantages(
                self.cfg.algorithm, batch.rewards, batch.mask, spec.rollout.samples_per_prompt,
                recipe.scale_advantages, spec.gamma, lambda moments: self.accelerator.reduce(moments, "sum"),
            )  # fmt: skip
            batch.returns = batch.advantages  # no critic to regress on them
            return
        batch.advantages, batch.returns = gae(batch.rewards, batch.values, batch.mask, spec.gamma, spec.lam)
        if spec.whiten_advantages:
            batch.advantages = masked_whiten(batch.advantages, batch.mask)

    # ----------------------------------------------------------------------------------------------
    # Update

    def update(self, batch: Rollout, timer: Timer) -> dict[str, float]:
        """[12] ppo_epochs passes over the rollout, reshuffled each time, in minibatches (one optimizer step
        each) of micro-batches (gradients accumulated). Returns the mean of each training statistic."""
        accelerator, model, micro = self.accelerator, self.model, self.batches.micro
        stats: dict[str, list[float]] = {}
        model.train()
        with timer.phase("training"):
            for epoch in range(self.spec.ppo_epochs):
                order = torch.randperm(len(batch.ids), device=batch.ids.device)
                for first in range(0, len(order), micro):
                    with accelerator.accumulate(model):
                        loss, micro_stats = self._micro_batch_loss(batch, order[first : first + micro])
                        self._stop_if_not_finite(loss, epoch)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            norm = accelerator.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
                            micro_stats["grad_norm"] = float(norm) if norm is not None else float("nan")
                        self.optimizer.step()
                        if accelerator.sync_gradients:
                            self.scheduler.step()
                        self.optimizer.zero_grad()
                    for key, value in micro_stats.items():
                        stats.setdefault(key, []).append(value)
        return {key: fmean(values) for key, values in stats.items()}

    def _micro_batch_loss(self, batch: Rollout, rows: Tensor) -> tuple[Tensor, dict[str, float]]:
        """[11] Clipped policy loss + vf_coef * clipped value loss (with a critic) + kl_coef * KL (where the KL
        is a loss term) - entropy_coef * entropy, one micro-batch.
        rows: [B] the micro-batch's indices into the rollout -> (loss: [], its statistics)."""
        spec, recipe = self.spec, self.recipe
        mask = batch.mask[rows]
        with self.accelerator.autocast():
            logp, entropy, values = response_forward(self.model, batch.ids[rows], batch.attention[rows],
                                                     batch.context, spec.rollout.temperature,
                                                     entropy_grad=spec.entropy_coef > 0)  # fmt: skip
        tis_cap, weights = spec.rollout.tis_cap, None
        if tis_cap is not None and batch.engine_logprobs is not None:
            weights = truncated_is_weights(batch.logprobs[rows], batch.engine_logprobs[rows], tis_cap)
        aggregation, max_tokens = recipe.loss_aggregation, spec.rollout.max_new_tokens
        pg_loss, clipfrac, approx_kl = policy_loss(logp, batch.logprobs[rows], batch.advantages[rows], mask,
                                                   spec.cliprange, weights, aggregation, max_tokens)  # fmt: skip
        mean_entropy = masked_mean(entropy, mask)
        loss = pg_loss - spec.entropy_coef * mean_entropy
        stats = {"policy_loss": pg_loss.item(), "clipfrac": clipfrac.item(), "approx_kl": approx_kl.item(),
                 "entropy": mean_entropy.item()}  # fmt: skip
        if values is not None:
            vf_loss, vf_clipfrac = value_loss(values, batch.values[rows], batch.returns[rows], mask,
                                              spec.cliprange_value)  # fmt: skip
            loss = loss + spec.vf_coef * vf_loss
            stats |= {"value_loss": vf_loss.item(), "value_clipfrac": vf_clipfrac.item()}
        if recipe.kl_penalty == "loss":
            kl = kl_estimate(logp, batch.ref_logprobs[rows], recipe.kl_estimator)
            kl_loss = aggregate(kl, mask, aggregation, max_tokens)
            loss = loss + self.kl_controller.kl_coef * kl_loss
            stats["kl_loss"] = kl_loss.item()
        stats["loss"] = loss.item()
        if weights is not None:
            stats["tis_weight_mean"] = masked_mean(weights, mask).item()
        return loss, stats

    def _stop_if_not_finite(self, loss: Tensor, epoch: int) -> None:
        """A NaN or inf loss (loss: []) on any process stops every process with one clear error, before the
        step that would spread it into the weights; the last checkpoint on disk is the last good state."""
        bad = self.accelerator.gather(torch.tensor([float(not torch.isfinite(loss))], device=loss.device))
        if bad.sum() > 0:
            last = last_complete_checkpoint(self.run.checkpoint_dir)
            kept = f"last good checkpoint kept: {last}" if last else "no checkpoint was saved yet"
            raise StageError(
                f"{self.cfg.algorithm.upper()} loss became {loss.item()} in update {self.state.update + 1} (PPO epoch {epoch + 1}); {kept} "
                "(lower the learning rate, or check the reward model's scores and stages.policy.ppo.reward_clip)"
            )

    # ----------------------------------------------------------------------------------------------
    # Metrics

    def metrics(
        self, batch: Rollout, samples: list[Sample], train: dict[str, float], timer: Timer
    ) -> dict[str, float]:
        """[14] What shows early whether PPO is healthy, averaged over processes."""
        mask = batch.mask
        local = {
            **metrics_of(batch.raw_scores, self.run.rewards),
            "score_mean": batch.scores.mean(),
            "reward_total_mean": (batch.rewards * mask).sum(-1).mean(),
            "kl": (batch.kl * mask).sum(-1).mean(),
            "no_eos_share": (~batch.ended).float().mean(),
            "response_tokens": torch.tensor(fmean(s.num_tokens for s in samples)),
            "advantage_mean": masked_mean(batch.advantages, mask),
            **{key: torch.tensor(value) for key, value in train.items()},
        }
        if self.recipe.critic:
            local |= {
                "explained_variance": torch.tensor(explained_variance(batch.values, batch.returns, mask)),
                "return_mean": masked_mean(batch.returns, mask),
                "value_mean": masked_mean(batch.values, mask),
            }
        if batch.engine_logprobs is not None:  # the train/inference mismatch of the rollout engine
            gap = (batch.logprobs - batch.engine_logprobs).abs() * mask
            local["rollout_logprob_gap_mean"] = masked_mean(gap, mask)
            local["rollout_logprob_gap_max"] = gap.max()  # averaged over processes, as every figure here
        device = self.accelerator.device
        values = torch.stack([v.float().to(device) for v in local.values()])
        averaged = dict(zip(local, self.accelerator.reduce(values, reduction="mean").tolist(), strict=True))
        tokens = float(self.accelerator.reduce(mask.sum().to(device), reduction="sum"))
        sequence_tokens = float(self.accelerator.reduce(batch.attention.sum().float(), reduction="sum"))
        seconds = timer.seconds
        generation_s, training_s = seconds.get("generation", 0.0), seconds.get("training", 0.0)
        return {
            **averaged,
            "kl_coef": self.kl_controller.kl_coef,
            "learning_rate": self.scheduler.get_last_lr()[0],
            "generation_s": generation_s,
            "scoring_s": seconds.get("scoring", 0.0),
            "training_s": training_s,
            "weight_sync_s": seconds.get("weight_sync", 0.0),
            "policy_version": float(self.engine.version),
            "rollout_tokens_per_s": tokens / max(generation_s, 1e-9),
            "train_tokens_per_s": self.spec.ppo_epochs * sequence_tokens / max(training_s, 1e-9),
        }

    # ----------------------------------------------------------------------------------------------
    # Checkpoints

    def save_checkpoint(self) -> Path:
        """Weights, optimizer, scheduler, KL controller, progress and every RNG state, written aside and
        renamed into place, so a kill mid-save leaves the previous checkpoint as the latest."""
        accelerator = self.accelerator
        final = self.run.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.state.update}"
        write_aside_then_rename(final, lambda staging: accelerator.save_state(str(staging)), accelerator)
        if accelerator.is_main_process:
            prune_checkpoints(self.run.checkpoint_dir, self.cfg.save_total_limit)
        accelerator.wait_for_everyone()  # no process lists the checkpoints while they are pruned
        return final

    def resume(self) -> int:
        """Continue from the newest complete checkpoint, if a previous try left one; the update it was at."""
        last = last_complete_checkpoint(self.run.checkpoint_dir)
        if last is None:
            return 0
        log.info("ppo: resuming from %s", last)
        self.accelerator.load_state(str(last))
        return self.state.update

    def save_policy(self, directory: Path) -> None:
        """The trained policy alone (its adapter, with LoRA) as a model directory. Every process calls this:
        under ZeRO-3 the full weights are gathered from all of them; the main process writes."""
        state = self.accelerator.get_state_dict(self.model)  # a collective: every process takes part
        if self.accelerator.is_main_process:
            policy_state = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
            policy = self.accelerator.unwrap_model(self.model).policy
            policy.save_pretrained(str(directory), state_dict=policy_state)
