"""The ``paper-smoke`` base: a random-initialised tiny Qwen3 with a Qwen3-style chat tokenizer, built offline.

The paper profiles load Qwen3-*-Base and its tokenizer from the hub. ``paper-smoke`` runs every other
piece of them (the chat template, the hub-format benchmarks from ../shared/data, the verifier on real
gold answers) on CPU, so it needs a base model that can read any text: a byte-level tokenizer (256 byte
tokens, no merges) with Qwen3's special tokens and a Qwen3-style ChatML template, and a Qwen3ForCausalLM
of the profile's ``sft.model`` shape with random weights (no supervised warm start: the smoke run checks
that the pipeline runs, not what it learns).
"""

from __future__ import annotations

from pathlib import Path

from g2rl_core.config import TinyModelConfig

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# Qwen3's ChatML layout (Qwen3-*-Base's template without tools or thinking): every turn is
# <|im_start|>role\ncontent<|im_end|>\n, and the generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_chat_tokenizer(model_max_length: int = 4096):
    """A byte-level tokenizer (every UTF-8 text round-trips) with Qwen3's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START],
        padding_side="left",
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_smoke_base(out: str | Path, shape: TinyModelConfig, seed: int = 0) -> Path:
    """Write the random tiny Qwen3 and its chat tokenizer to ``out`` (Hugging Face format); returns ``out``."""
    from g2rl_core.pipeline.tiny import build_model

    out = Path(out)
    tokenizer = build_chat_tokenizer(model_max_length=shape.max_position_embeddings)
    model = build_model(tokenizer, shape, seed=seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
