"""What rlhf adds to each vLLM worker (`worker_extension_cls`): take the trainer's weights, and say which
version of the policy it holds. Imported inside vLLM's workers only.

vLLM's weight-transfer API moves tensors over NCCL or CUDA IPC, GPUs only, and a model's own `load_weights`
fails on the CPU backend (it repacks linear weights after loading); the worker's `reload_weights` runs the
model's loader and its post-processing on every backend, so this one path serves both."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any


class NoWeightsExpected(logging.Filter):
    """vLLM's reload warns "<layer>: Failed to load weights" for layers no checkpoint holds a weight of: rotary
    embeddings, and a tied output head (re-packed by `_repack_tied_head`). Those lines only; any other layer
    that fails to load is still reported."""

    def __init__(self, layers: set[str]) -> None:
        super().__init__()
        self.layers = layers

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.msg == "%s: Failed to load weights" and record.args and record.args[0] in self.layers
        )


class PolicyWeights:
    """Mixed into vLLM's worker class, whose `reload_weights` it calls."""

    rlhf_version: int = -1
    reload_weights: Any  # the worker's
    model_runner: Any  # the worker's
    model_config: Any  # the worker's

    def rlhf_load_weights(self, weights: Iterable[tuple[str, Any]] | bytes, version: int) -> int:
        """Replace every weight: (name, tensor) pairs handed over in the same process, or safetensors bytes
        from another; then hold `version`. Returns the version now held."""
        if isinstance(weights, bytes):
            from safetensors.torch import load

            weights = load(weights).items()
        if not getattr(self, "rlhf_filter_installed", False):
            tied = self.model_config.hf_config.tie_word_embeddings
            layers = {"RotaryEmbedding", *(["ParallelLMHead"] if tied else [])}
            logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
                NoWeightsExpected(layers)
            )
            self.rlhf_filter_installed = True
        self.reload_weights(weights_iterator=iter(weights))
        self._repack_tied_head()
        self.rlhf_version = version
        return version

    def _repack_tied_head(self) -> None:
        """A tied output head reads the embedding's storage, which the reload refilled; but the CPU backend
        packed a copy of it for its GEMM at load time, and the reload skips the head (nothing in a tied
        checkpoint names it): pack it again, or the logits come from the old embedding."""
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        if (
            head is not None
            and hasattr(head, "cpu_linear")
            and self.model_config.hf_config.tie_word_embeddings
        ):
            head.quant_method.process_weights_after_loading(head)

    def rlhf_policy_version(self) -> int:
        return self.rlhf_version
