"""The built-in model specs as data: architecture dimensions, the tokenizer each gets, and which published
checkpoints the real-size shapes stand for. No torch here: `rlhf plan` sizes models from this table.

Two kinds of spec:

- *tiny* specs (`tiny-llama`, `small-llama`, ...): small random-init models with a word-level tokenizer
  trained on the built-in task, sized so the whole pipeline learns the task on a CPU in minutes;
- *shapes* (`qwen2.5-0.5b-shape`, `llama-3.2-1b-shape`, ...): random-init models with the dimensions the
  published `config.json` of a real model states (hidden size, layers, heads, KV heads, intermediate size,
  vocabulary, tied embeddings, RoPE), a byte-level BPE tokenizer trained locally and the real model's chat
  template, so that memory and speed are measured at a real size without a hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Tokenizer = Literal["word", "word-encoder", "chatml", "llama3"]


@dataclass(frozen=True)
class Architecture:
    """A built-in spec: its transformers `model_type`, the config keys that size it, and its tokenizer.

    `vocab_size` None: the tokenizer's size (tiny specs). A shape keeps the published vocabulary, larger than
    the locally trained tokenizer, as the real checkpoints are (Qwen2.5's 151,936 rows hold ~151.6k tokens).
    """

    model_type: str
    dims: dict[str, object]
    tokenizer: Tokenizer = "word"
    vocab_size: int | None = None
    stands_for: str | None = None  # the published checkpoint whose config.json these dimensions are
    dtype: str = "float32"  # what the spec is saved in: the published checkpoint's `torch_dtype` for a shape
    extra: dict[str, object] = field(default_factory=dict)  # config keys that do not size the model

    @property
    def is_shape(self) -> bool:
        return self.stands_for is not None

    def config_kwargs(self) -> dict[str, object]:
        """Keyword arguments for `AutoConfig.for_model(model_type, ...)` (vocab_size and token ids aside)."""
        return {**self.dims, **self.extra}


_QWEN2_EXTRA = dict(rope_theta=1_000_000.0, rms_norm_eps=1e-6, use_sliding_window=False, hidden_act="silu")
_LLAMA3_ROPE = dict(
    rope_type="llama3", factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
    original_max_position_embeddings=8192,
)  # fmt: skip

ARCHITECTURES: dict[str, Architecture] = {
    # Small enough to train in seconds on 2 cores, big enough to learn the built-in task. Two wide-ish layers
    # learned it faster than four narrow ones (field notes).
    "tiny-llama": Architecture("llama", dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
    )),
    "tiny-qwen2": Architecture("qwen2", dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )),
    "tiny-gpt2": Architecture("gpt2", dict(n_embd=128, n_layer=2, n_head=4, n_positions=256)),
    # ~40M parameters: for benchmarks and GPU checks, where the tiny ones are all overhead.
    "small-llama": Architecture("llama", dict(
        hidden_size=512, intermediate_size=1408, num_hidden_layers=12, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=1024, tie_word_embeddings=True,
    )),
    # ~100M parameters: for the ZeRO memory benchmark, where model states must outweigh the libraries.
    "medium-llama": Architecture("llama", dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=14, num_attention_heads=12,
        num_key_value_heads=12, max_position_embeddings=1024, tie_word_embeddings=True,
    )),
    # An encoder reward model with its own tokenizer (no chat template), for the encoder path on a CPU.
    "tiny-bert": Architecture("bert", dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, num_labels=1,
    ), tokenizer="word-encoder"),
    # Real shapes: the dimensions of each published config.json, random weights.
    "qwen2.5-0.5b-shape": Architecture("qwen2", dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
    ), tokenizer="chatml", vocab_size=151_936, stands_for="Qwen/Qwen2.5-0.5B", dtype="bfloat16",
        extra=_QWEN2_EXTRA),
    "qwen2.5-1.5b-shape": Architecture("qwen2", dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
    ), tokenizer="chatml", vocab_size=151_936, stands_for="Qwen/Qwen2.5-1.5B", dtype="bfloat16",
        extra=_QWEN2_EXTRA),
    "llama-3.2-1b-shape": Architecture("llama", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, tie_word_embeddings=True,
    ), tokenizer="llama3", vocab_size=128_256, stands_for="meta-llama/Llama-3.2-1B", dtype="bfloat16",
        extra=dict(rope_theta=500_000.0, rms_norm_eps=1e-5, rope_scaling=_LLAMA3_ROPE, hidden_act="silu")),
    # For `rlhf plan` of the 8B recipe; materializing it takes ~32 GB of host memory.
    "llama-3.1-8b-shape": Architecture("llama", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, tie_word_embeddings=False,
    ), tokenizer="llama3", vocab_size=128_256, stands_for="meta-llama/Llama-3.1-8B", dtype="bfloat16",
        extra=dict(rope_theta=500_000.0, rms_norm_eps=1e-5, rope_scaling={**_LLAMA3_ROPE, "factor": 8.0},
                   hidden_act="silu")),
}  # fmt: skip

# A published checkpoint -> the shape with its dimensions (what `rlhf plan` sizes a hub id by, offline).
SHAPE_OF: dict[str, str] = {arch.stands_for: name for name, arch in ARCHITECTURES.items() if arch.stands_for}


def is_builtin_spec(name: str) -> bool:
    return name in ARCHITECTURES
