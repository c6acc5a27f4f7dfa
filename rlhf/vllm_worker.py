"""What rlhf adds to each vLLM worker (`worker_extension_cls`): take the trainer's weights, and say which
version of the policy it holds. Imported inside vLLM's workers only.

vLLM's weight-transfer API moves tensors over NCCL or CUDA IPC, GPUs only, and a model's own `load_weights`
fails on the CPU backend (it repacks linear weights after loading); the worker's `reload_weights` runs the
model's loader and its post-processing on every backend, so this one path serves both."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


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
