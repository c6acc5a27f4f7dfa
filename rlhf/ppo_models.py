"""The models the online algorithms run: the policy, its frozen reference, the frozen reward models and (PPO)
the trainable value model, loaded as the stage chose (`build_models`), and the policy + value as one trainable module.

The `[n]` marks are the PPO details listed in `rlhf.ppo`'s docstring.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from rlhf.models import PolicyTraining, is_adapter, load_causal_lm, load_reward_model
from rlhf.precision import LoadDtypes
from rlhf.settings import ModelSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class RewardModel:
    """A frozen reward model as the rollout scores with it."""

    model: PreTrainedModel  # or, once the trainer starts, its ZeRO-3 engine (`rlhf.sharding.frozen_engine`)
    tokenizer: PreTrainedTokenizerBase
    shared_tokenizer: bool  # it reads the policy's token ids as they are


@dataclass
class PPOModels:
    """Everything an online algorithm runs. `reference` None: the policy with its LoRA adapters disabled (no
    second copy); `value` None: a value head on the policy (PPO), or no critic at all (`critic` False)."""

    policy: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    reference: PreTrainedModel | None
    rewards: list[RewardModel]  # in the order the stage's `rewards` names them
    value: nn.Module | None
    critic: bool = True


def disable_dropout(model: nn.Module) -> None:
    """[4] Dropout off everywhere, also while training: PPO's ratio compares two forward passes, which
    dropout would make differ by noise alone. (Train mode stays on for gradient checkpointing.)"""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


class ValueModel(nn.Module):
    """A per-token value from a sequence classifier: its backbone's hidden state at every position, through
    its one-output head. Built from the reward model, it starts out knowing what the reward favours [5]."""

    def __init__(self, classifier: PreTrainedModel) -> None:
        super().__init__()
        self.backbone = getattr(classifier, classifier.base_model_prefix)
        self.head = classifier.score

    def forward(self, ids: Tensor, attention: Tensor, positions: Tensor) -> Tensor:
        """ids, attention, positions: [B, L] -> values: [B, L]."""
        hidden = self.backbone(input_ids=ids, attention_mask=attention, position_ids=positions)
        return self.head(hidden.last_hidden_state).squeeze(-1)


class PolicyAndValue(nn.Module):
    """The trainable part as one module, so one optimizer (and one DeepSpeed engine) holds both.

    With `value` None the value is a linear head on the policy's last hidden state, initialized to 0 [5];
    without a critic (`critic` False: the critic-free algorithms) the policy alone, and no values."""

    def __init__(self, policy: PreTrainedModel, value: nn.Module | None, critic: bool = True) -> None:
        super().__init__()
        self.policy = policy
        self.value = value
        self.config = policy.config  # accelerate sizes DeepSpeed's "auto" buckets from its hidden_size
        self.value_head = None
        if value is None and critic:
            self.value_head = nn.Linear(policy.config.hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(
        self, ids: Tensor, attention: Tensor, positions: Tensor, keep: int = 0
    ) -> tuple[Tensor, Tensor | None]:
        """ids, attention, positions: [B, L] -> (logits: [B, K, V], values: [B, L] or None without a critic):
        the logits of the last K = `keep` positions where the model can leave out the others (see
        `logits_kept`), else of all L."""
        out = self.policy(input_ids=ids, attention_mask=attention, position_ids=positions,
                          output_hidden_states=self.value_head is not None,
                          **logits_kept(self.policy, keep))  # fmt: skip
        if self.value_head is not None:
            return out.logits, self.value_head(out.hidden_states[-1]).squeeze(-1)
        if self.value is not None:
            return out.logits, self.value(ids, attention, positions)
        return out.logits, None


def logits_kept(model: nn.Module, keep: int) -> dict[str, int]:
    """The keyword that has a causal LM compute logits for its last `keep` positions only (0: all), where it
    takes one: PPO reads log-probs at the response's positions alone, and over a 152k vocabulary the prompt's
    logits would cost as much memory again as the response's. A DeepSpeed engine or a peft model passes it
    on to the model it wraps; a remote-code model without the argument computes all."""
    inner = getattr(model, "module", model)  # a DeepSpeed engine's model
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft's
    return (
        {"logits_to_keep": keep}
        if keep and "logits_to_keep" in inspect.signature(inner.forward).parameters
        else {}
    )


def build_models(
    policy: ModelSpec,
    rewards: Sequence[ModelSpec],
    training: PolicyTraining,
    value_model: str | None,
    dtypes: LoadDtypes,
) -> PPOModels:
    """Load the start policy, its reference, the reward models and the value model, as the stage chose:

    - policy and reference (`training`, from `rlhf.models.policy_training`): with a fresh LoRA adapter on the
      start, the reference is its base with the adapters disabled; otherwise a frozen copy of the start.
    - value (`reward`): a trainable copy of the first reward model when it reads the policy's tokens; when
      the tokenizers differ or there is no reward model (reward functions alone), a copy of the policy's
      backbone with a fresh head (values must be per policy token).
    - value (`policy_head`): a zero-initialized head on the policy; None: no critic (GRPO, RLOO, REINFORCE++).

    Each loads in its precision (`dtypes`: trained or frozen); under ZeRO-3 each loads partitioned, so the
    value model is loaded again rather than copied from the (partitioned) reward model.
    """
    adapter = training.new_adapter is not None or is_adapter(policy.name)
    model, tokenizer = load_causal_lm(policy, dtypes.of_trained(adapter))
    reference = None
    if training.new_adapter is not None:
        from peft import get_peft_model

        model = get_peft_model(model, training.new_adapter)
    else:
        reference, _ = load_causal_lm(policy, dtypes.frozen)
    loaded = []
    for spec in rewards:
        reward_model, reward_tokenizer = load_reward_model(spec, dtypes.frozen)
        loaded.append(
            RewardModel(reward_model, reward_tokenizer, tokenizer.get_vocab() == reward_tokenizer.get_vocab())
        )
    value = None
    if value_model == "reward" and loaded and loaded[0].shared_tokenizer:
        value = ValueModel(load_reward_model(rewards[0], dtypes.trained)[0])
    elif value_model == "reward":
        log.info(
            "ppo: no reward model reads the policy's tokens: value model = a copy of the policy's backbone"
        )
        classifier, _ = load_reward_model(policy, dtypes.trained)
        with gathered_for_change(classifier.score.weight):
            nn.init.zeros_(classifier.score.weight)
        value = ValueModel(classifier)
    frozen = [reference, *(r.model for r in loaded)]
    for module in frozen:
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    for module in (model, value, *frozen):
        if module is not None:
            disable_dropout(module)
    return PPOModels(model, tokenizer, reference, loaded, value, critic=value_model is not None)


def gathered_for_change(param: nn.Parameter) -> AbstractContextManager[object]:
    """A parameter whole for the block, changes kept: under ZeRO-3 gathered, then re-partitioned from rank 0."""
    if not hasattr(param, "ds_tensor"):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(param, modifier_rank=0)
