"""Built-in specs made real: their tokenizers and chat templates, random-init models, a directory on disk.

What each spec is (dimensions, tokenizer kind, the checkpoint a shape stands for) is data in
`rlhf.architectures`. A spec is *materialized* once into a directory (weights + tokenizer), and every stage
after that loads from disk like any Hugging Face checkpoint (`rlhf.models`): one loading path.

Tokenizers are trained here, in seconds, on the built-in task's text (no hub):
- tiny specs: word-level, with our own role tokens and template (short sequences: a tiny model learns fast);
- shapes: byte-level BPE like the real models', with the real models' special tokens and chat template.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf.architectures import ARCHITECTURES, Architecture, is_builtin_spec
from rlhf.data.synthetic import task_corpus
from rlhf.errors import ModelError
from rlhf.models import PAD, save_pretrained_atomic
from rlhf.settings import ModelSpec

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

# Role markers and the end-of-turn token are special tokens, so they never merge with text and the
# policy can learn to stop. PAD is distinct from EOS: the reward head reads the last non-pad token.
UNK, BOS, EOS = "<unk>", "<s>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# Each message is `<|role|> content <|end|>`; assistant content is wrapped in generation markers so TRL's
# assistant-only loss can find it in multi-turn data.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|> ' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + ' <|end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + ' <|end|>' }}{% endif %}"
    "{{ ' ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)

# Encoders have no chat template: a conversation is plain text, one `role: content` turn per paragraph
# (`rlhf.rewards.pair_text`). Their tokenizer wraps each text RoBERTa-style, `<s> text <|end|>`: BOS serves as
# [CLS] (BERT's pooler reads position 0) and EOS as [SEP].
PLAIN_TURN, PLAIN_TURN_SEPARATOR = "{role}: {content}", "\n\n"
PLAIN_ROLES = ("system", "user", "assistant")


# --------------------------------------------------------------------------------------------------
# The real models' chat formats, for the shapes. Each is the published template (tool calls left out) with
# `{% generation %}` markers around the assistant's turn, which TRL's assistant-only loss needs.


class ChatFormat:
    """A real model family's special tokens and chat template."""

    def __init__(
        self, specials: dict[str, str], extra: tuple[str, ...], template: str, text: str = ""
    ) -> None:
        self.specials = specials  # bos/eos/pad -> token
        self.extra = extra  # other special tokens of the format
        self.template = template
        # the template's own words (role names, a default system prompt), trained on with the task text so
        # they encode in a few tokens as they do in the real vocabulary, not byte by byte
        self.text = f"system user assistant\n\n{text}"

    @property
    def tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.specials.values(), *self.extra]))


QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5: ChatML, its default system prompt when a conversation has none; EOS is the end of a turn.
CHATML = ChatFormat(
    specials={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    extra=("<|im_start|>",),
    template=(
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
        "{%- else %}"
        "{{- '<|im_start|>system\\n" + QWEN_SYSTEM + "<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'assistant' %}"
        "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
        "{{- '\\n' }}"
        "{%- elif not (message['role'] == 'system' and loop.first) %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    ),
    text=QWEN_SYSTEM,
)  # fmt: skip

# Llama 3: header tokens around each role, `<|eot_id|>` ending a turn (EOS), BOS written by the template.
LLAMA3 = ChatFormat(
    specials={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
              "pad_token": "<|finetune_right_pad_id|>"},
    extra=("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"),
    template=(
        "{{- bos_token }}"
        "{%- for message in messages %}"
        "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
        "{%- if message['role'] == 'assistant' %}"
        "{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{%- else %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
    ),
)  # fmt: skip

CHAT_FORMATS = {"chatml": CHATML, "llama3": LLAMA3}
BPE_VOCAB = 8192  # merges the task text supports; the model keeps the published vocabulary size


# --------------------------------------------------------------------------------------------------
# Tokenizers


def build_tokenizer(corpus: Iterable[str], encoder: bool = False) -> PreTrainedTokenizerBase:
    """A word-level tokenizer trained on `corpus`, with special tokens and our chat template.

    Word-level rather than BPE: on templated task text it gives ~3x shorter sequences (field notes), so a
    tiny model sees whole words and learns the task in seconds. An `encoder` tokenizer has no chat template;
    it knows the plain-text role words instead and wraps every text in `<s> ... <|end|>`.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, UNK, BOS, EOS, *ROLE_TOKENS]
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    if encoder:
        corpus = [*corpus, *(PLAIN_TURN.format(role=role, content="") for role in PLAIN_ROLES)]
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    if encoder:
        ids = [(token, tokenizer.token_to_id(token)) for token in (BOS, EOS)]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B:1 {EOS}:1", special_tokens=ids
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        additional_special_tokens=list(ROLE_TOKENS), padding_side="right", model_max_length=256,
        **(dict(cls_token=BOS, sep_token=EOS) if encoder else {}),
    )  # fmt: skip
    if not encoder:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_bpe_tokenizer(
    corpus: Iterable[str], chat: ChatFormat, model_max_length: int
) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer (GPT-2's byte alphabet, as Qwen2.5 and Llama 3 use) trained on `corpus`,
    with `chat`'s special tokens and template: any text encodes, nothing is unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=chat.tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator([*corpus, chat.text], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side="right",
                                   model_max_length=model_max_length, **chat.specials,
                                   additional_special_tokens=list(chat.extra))  # fmt: skip
    fast.chat_template = chat.template
    return fast


def tokenizer_for(arch: Architecture) -> PreTrainedTokenizerBase:
    if arch.tokenizer in CHAT_FORMATS:
        length = int(arch.dims.get("max_position_embeddings", 2048))  # type: ignore[call-overload]
        return build_bpe_tokenizer(task_corpus(), CHAT_FORMATS[arch.tokenizer], length)
    return build_tokenizer(task_corpus(), encoder=arch.tokenizer == "word-encoder")


# --------------------------------------------------------------------------------------------------
# Models


def builtin_config(name: str, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The transformers config of a built-in spec, its special token ids from `tokenizer`."""
    from transformers import AutoConfig

    if not is_builtin_spec(name):
        raise ModelError(f"model '{name}': not a built-in spec (known: {', '.join(ARCHITECTURES)})")
    arch = ARCHITECTURES[name]
    return AutoConfig.for_model(
        arch.model_type,
        vocab_size=arch.vocab_size or len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **arch.config_kwargs(),
    )


def build_builtin_model(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random-init model of a real architecture, deterministic for a seed, in the spec's dtype: a causal
    LM, or for an encoder spec a sequence classifier with one output (a reward model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    arch = ARCHITECTURES.get(name)
    tokenizer = tokenizer_for(arch) if arch else None
    config = builtin_config(name, tokenizer)
    torch.manual_seed(seed)
    dtype = getattr(torch, arch.dtype)
    if arch.tokenizer == "word-encoder":
        return AutoModelForSequenceClassification.from_config(config, dtype=dtype), tokenizer
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def materialize(spec: ModelSpec, out_dir: Path, seed: int = 0) -> Path:
    """Write a built-in spec to `out_dir` as a standalone HF directory (reused if already there)."""
    if (out_dir / "config.json").is_file():
        return out_dir
    model, tokenizer = build_builtin_model(spec.name, seed)
    save_pretrained_atomic(model, tokenizer, out_dir)
    return out_dir
