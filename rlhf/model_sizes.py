"""A model's size from its name, offline: dimensions and parameter counts without loading anything.

Why: `rlhf plan` must say what a 70B stage needs on a laptop with no hub and no torch. A name is sized the
way a run resolves it: a `--model-shape` statement, a built-in spec (`rlhf.architectures`), a registry
version's directory, a local directory (config.json; a LoRA adapter's adapter_config.json with its base), a
published checkpoint with a built-in shape (`SHAPE_OF`), or the hub's local cache.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlhf.architectures import ARCHITECTURES, SHAPE_OF
from rlhf.errors import ConfigError, RlhfError
from rlhf.registry import Registry, is_reference

# A tiny spec's word-level tokenizer is trained on the fly from the task; its size is not known before (the
# built-in task's vocabulary stays well under this). A materialized directory's config.json says it exactly.
TINY_VOCAB_ESTIMATE = 1024
ALL_LINEAR = "all-linear"  # peft's every linear layer but the output head


@dataclass(frozen=True)
class Dims:
    """What sizes a transformer. `kind`: a decoder with RMSNorms and RoPE (llama, qwen2, mistral), gpt2, or a
    bert-style encoder (learned positions, LayerNorms and biases everywhere)."""

    kind: Literal["decoder", "gpt2", "encoder"]
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False
    qkv_bias: bool = False
    positions: int = 0  # learned position embeddings (gpt2, bert); RoPE has none
    source: str = ""


@dataclass(frozen=True)
class Shape:
    """A model as sized: its dimensions, and when it is a LoRA adapter, the adapter's parameters (the base is
    sized by `dims`)."""

    dims: Dims
    adapter: int = 0


def dims_from_config(config: Mapping[str, Any], source: str) -> Dims:
    """Dims from a transformers config.json (llama / qwen2 / mistral keys, gpt2's n_* keys, bert's)."""
    kind, vocab = config.get("model_type", ""), config.get("vocab_size") or TINY_VOCAB_ESTIMATE
    try:
        if kind == "gpt2":
            h, heads = config["n_embd"], config["n_head"]
            return Dims("gpt2", h, config.get("n_inner") or 4 * h, config["n_layer"], heads, heads, h // heads,
                        vocab, True, True, config.get("n_positions", 1024), source)  # fmt: skip
        h, heads = config["hidden_size"], config["num_attention_heads"]
        if kind in ("bert", "roberta", "xlm-roberta", "electra"):
            return Dims("encoder", h, config["intermediate_size"], config["num_hidden_layers"], heads, heads,
                        h // heads, vocab, True, True, config.get("max_position_embeddings", 512), source)  # fmt: skip
        return Dims("decoder", h, config["intermediate_size"], config["num_hidden_layers"], heads,
                    config.get("num_key_value_heads") or heads, config.get("head_dim") or h // heads, vocab,
                    config.get("tie_word_embeddings", False), config.get("attention_bias", kind == "qwen2"),
                    0, source)  # fmt: skip
    except KeyError as exc:
        raise ConfigError(
            f"{source}: cannot size a {kind or 'model'} (its config has no {exc.args[0]})"
        ) from None


def linears(d: Dims) -> dict[str, tuple[int, int]]:
    """One layer's linear modules by their names (as LoRA targets them): (in, out) features."""
    h, i, q, kv = d.hidden, d.intermediate, d.heads * d.head_dim, d.kv_heads * d.head_dim
    if d.kind == "gpt2":
        return {"attn.c_attn": (h, 3 * h), "attn.c_proj": (h, h), "mlp.c_fc": (h, i), "mlp.c_proj": (i, h)}
    if d.kind == "encoder":
        return {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
                "attention.output.dense": (h, h), "intermediate.dense": (h, i), "output.dense": (i, h)}  # fmt: skip
    return {"self_attn.q_proj": (h, q), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
            "self_attn.o_proj": (q, h), "mlp.gate_proj": (h, i), "mlp.up_proj": (h, i), "mlp.down_proj": (i, h)}  # fmt: skip


def backbone_params(d: Dims) -> int:
    """Embeddings + layers + what closes the stack, without any head. Exact for llama / qwen2 (q/k/v biases),
    two RMSNorms a layer and a final one; gpt2 and bert count biases on every linear and two LayerNorms a
    layer, plus gpt2's final LayerNorm and bert's token types, embedding LayerNorm and pooler."""
    layer = sum(a * b for a, b in linears(d).values())
    if d.kind == "decoder":
        layer += ((d.heads + 2 * d.kv_heads) * d.head_dim if d.qkv_bias else 0) + 2 * d.hidden
        closing = d.hidden
    else:
        layer += sum(out for _, out in linears(d).values()) + 4 * d.hidden
        closing = 2 * d.hidden if d.kind == "gpt2" else 4 * d.hidden + d.hidden * d.hidden + d.hidden
    return (d.vocab + d.positions) * d.hidden + d.layers * layer + closing


def causal_params(d: Dims) -> int:
    """A causal LM: the backbone and its LM head (V x h), none when tied to the input embeddings."""
    return backbone_params(d) + (0 if d.tied else d.vocab * d.hidden)


def classifier_params(d: Dims) -> int:
    """A sequence classifier with one output (reward or value model): the backbone and an h x 1 head."""
    return backbone_params(d) + d.hidden + (d.kind == "encoder")


def adapter_params(d: Dims, r: int, targets: str | list[str] | tuple[str, ...], key: str) -> int:
    """LoRA's r x (in + out) for every targeted linear of every layer (`all-linear`: each but the head; a
    string otherwise a regular expression searched in the module name, a list matched on name suffixes)."""
    names = list(linears(d))
    if targets == ALL_LINEAR:
        chosen = names
    elif isinstance(targets, str):
        chosen = [n for n in names if re.search(targets, n)]
    else:
        chosen = [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]
    if not chosen:
        short = ", ".join(n.rsplit(".", 1)[-1] for n in names)
        raise ConfigError(f"{key}: target_modules {targets!r} match no linear layer of this model ({short})")
    return d.layers * r * sum(sum(linears(d)[n]) for n in chosen)


# --------------------------------------------------------------------------------------------------
# Where a model's dimensions come from, offline


@dataclass(frozen=True)
class Shapes:
    """How names are sized: the registry to look references up in, and the user's `REF=SPEC` statements."""

    registry: Path
    given: Mapping[str, str] = field(default_factory=dict)

    def of(self, name: str, key: str, base: str | None = None) -> Shape:
        """The shape of a model named as a config names one; `key` is where, for the error message."""
        if name in self.given:
            return Shapes(self.registry).of(self.given[name], f"--model-shape {name}", base)
        if name in ARCHITECTURES:
            arch = ARCHITECTURES[name]
            return Shape(
                dims_from_config(
                    {"model_type": arch.model_type, **arch.dims, "vocab_size": arch.vocab_size}, name
                )
            )
        if is_reference(name):
            try:
                registry = Registry(self.registry)
                manifest = registry.manifest(name)
            except RlhfError:
                raise ConfigError(
                    f"{key}: {name} is not in the registry at {shown(self.registry)}; pass --model-shape {name}=SPEC "
                    "(a built-in spec such as llama-3.1-8b-shape, a directory or a hub id)"
                ) from None
            return self.of_directory(registry.resolve(manifest.ref), key, base or manifest.lora_base)
        if Path(name).expanduser().is_dir():
            return self.of_directory(Path(name).expanduser(), key, base)
        if name in SHAPE_OF:
            return self.of(SHAPE_OF[name], key)
        if cached := hub_config(name):
            return Shape(dims_from_config(json.loads(cached.read_text(encoding="utf-8")), name))
        raise ConfigError(f"{key}: cannot size {name} offline (no built-in spec, directory, registry version, known "
                          f"shape or hub cache has it); pass --model-shape {name}=SPEC")  # fmt: skip

    def of_directory(self, path: Path, key: str, base: str | None) -> Shape:
        """A model directory's config.json, or a LoRA adapter's config with its base sized in turn."""
        adapter_file, config_file = path / "adapter_config.json", path / "config.json"
        if adapter_file.is_file():
            adapter = json.loads(adapter_file.read_text(encoding="utf-8"))
            base = base or adapter.get("base_model_name_or_path")
            if not base:
                raise ConfigError(f"{key}: {path} is a LoRA adapter that names no base model")
            dims = self.of(base, key).dims
            targets = adapter.get("target_modules") or ALL_LINEAR
            return Shape(dims, adapter_params(dims, int(adapter.get("r", 8)), targets, f"{adapter_file}"))
        if not config_file.is_file():
            raise ConfigError(f"{key}: {path} has no config.json (not a Hugging Face model directory)")
        return Shape(dims_from_config(json.loads(config_file.read_text(encoding="utf-8")), str(path)))


def shown(path: Path) -> str:
    """A path as a user would type it: `./registry` rather than `registry`."""
    return str(path) if path.is_absolute() or str(path).startswith(".") else f"./{path}"


def hub_config(repo: str) -> Path | None:
    """A hub model's config.json in the local cache (huggingface_hub is light; no download)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "config.json")
    except Exception:  # an id the hub's validators refuse is just not in the cache
        return None
    return Path(found) if isinstance(found, str) else None
