"""Models: built-in tiny specs of real architectures, local loading with safety defaults, LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.builtin_models import EOS, build_builtin_model, materialize
from rlhf.errors import ModelError
from rlhf.models import PAD, load_causal_lm, lora_config
from rlhf.settings import LoraSpec, ModelSpec


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-qwen2"])
def test_tiny_spec_is_a_real_architecture_with_a_chat_tokenizer(name: str) -> None:
    model, tokenizer = build_builtin_model(name)
    expected = {"tiny-llama": "llama", "tiny-qwen2": "qwen2", "tiny-gpt2": "gpt2"}[name]
    assert model.config.model_type == expected
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert tokenizer.pad_token == PAD and tokenizer.eos_token == EOS
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    messages = [{"role": "user", "content": "name two animals"}, {"role": "assistant", "content": "cat dog"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|user|> name two animals <|end|> <|assistant|> cat dog <|end|> "
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids  # the task's words are all in the vocabulary
    assert tokenizer.decode(ids, skip_special_tokens=True) == "name two animals cat dog"
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))


def test_tiny_spec_is_deterministic_for_a_seed() -> None:
    a, _ = build_builtin_model("tiny-llama", seed=1)
    b, _ = build_builtin_model("tiny-llama", seed=1)
    c, _ = build_builtin_model("tiny-llama", seed=2)
    first = next(iter(a.state_dict()))
    assert torch.equal(a.state_dict()[first], b.state_dict()[first])
    assert not torch.equal(a.state_dict()[first], c.state_dict()[first])


def test_materialized_model_loads_back_identically(tiny_llama_dir: Path) -> None:
    assert any(tiny_llama_dir.glob("*.safetensors"))
    model, tokenizer = load_causal_lm(ModelSpec(name=str(tiny_llama_dir)))
    fresh, _ = build_builtin_model("tiny-llama", seed=0)
    ids = tokenizer("name three fruits", return_tensors="pt")["input_ids"]
    assert torch.allclose(model(ids).logits, fresh(ids).logits, atol=1e-6)
    assert tokenizer.chat_template is not None


def test_materialize_reuses_an_existing_directory(tiny_llama_dir: Path) -> None:
    stamp = (tiny_llama_dir / "config.json").stat().st_mtime_ns
    assert materialize(ModelSpec(name="tiny-llama"), tiny_llama_dir) == tiny_llama_dir
    assert (tiny_llama_dir / "config.json").stat().st_mtime_ns == stamp


def test_unknown_hub_id_offline_is_one_clear_error() -> None:
    with pytest.raises(ModelError, match=r"model 'no-such-org/no-such-model': cannot load") as err:
        load_causal_lm(ModelSpec(name="no-such-org/no-such-model"))
    assert "\n" not in str(err.value)


def test_missing_directory_is_reported() -> None:
    with pytest.raises(ModelError, match="no such directory"):
        load_causal_lm(ModelSpec(name="./models/absent"))


def test_pickle_weights_are_refused(tmp_path: Path, tiny_llama_dir: Path) -> None:
    model, tokenizer = load_causal_lm(ModelSpec(name=str(tiny_llama_dir)))
    model.save_pretrained(tmp_path, safe_serialization=False)
    tokenizer.save_pretrained(tmp_path)
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelError, match="only safetensors"):
        load_causal_lm(ModelSpec(name=str(tmp_path)))


def test_remote_code_is_off_unless_asked(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """A config that asks for custom code (auto_map) is not executed by default."""
    model, tokenizer = load_causal_lm(ModelSpec(name=str(tiny_llama_dir)))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    loaded, _ = load_causal_lm(ModelSpec(name=str(tmp_path)))  # ignores auto_map: no SystemExit
    assert type(loaded).__name__ == "LlamaForCausalLM"


def test_lora_block_trains_only_adapters(tiny_llama_dir: Path) -> None:
    from peft import get_peft_model

    model, _ = load_causal_lm(ModelSpec(name=str(tiny_llama_dir)))
    total = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(
        model, lora_config(LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    )
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.1 * total
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in names)
    assert lora_config(None) is None


# The published parameter counts of the checkpoints the shapes stand for, and their chat formats.
SHAPES = {
    "qwen2.5-0.5b-shape": (494_032_768, "<|im_end|>",
                           "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                           "<|im_end|>\n<|im_start|>user\nname two animals<|im_end|>\n<|im_start|>assistant\n"),
    "llama-3.2-1b-shape": (1_235_814_400, "<|eot_id|>",
                           "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nname two animals<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}  # fmt: skip


@pytest.mark.parametrize("name", SHAPES)
def test_a_real_shape_has_the_published_size_tokenizer_and_chat_template(name: str) -> None:
    """Sized on the meta device (no memory): the dimensions give the published parameter count; the byte-level
    tokenizer encodes any text losslessly, ends a turn with the real EOS, and marks the assistant's turn for
    TRL's assistant-only loss."""
    from transformers import AutoModelForCausalLM

    from rlhf.architectures import ARCHITECTURES
    from rlhf.builtin_models import builtin_config, tokenizer_for

    parameters, eos, prompt = SHAPES[name]
    tokenizer = tokenizer_for(ARCHITECTURES[name])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(builtin_config(name, tokenizer))
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model.config.vocab_size == ARCHITECTURES[name].vocab_size >= len(tokenizer)
    assert tokenizer.eos_token == eos and tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    turn = [{"role": "user", "content": "name two animals"}]
    assert tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True) == prompt
    text = "Ünïcode, emoji 🙂 and words the task never used"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    answered = tokenizer.apply_chat_template([*turn, {"role": "assistant", "content": "cat dog"}], return_dict=True,
                                             return_assistant_tokens_mask=True)  # fmt: skip
    marked = [i for i, m in zip(answered["input_ids"], answered["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(marked) == f"cat dog{eos}"
