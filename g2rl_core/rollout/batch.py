"""The rollout batch layout and the prompt/padding helpers every back-end shares.

Rollout back-ends behind one interface: Hugging Face transformers (default on CPU) and vLLM.

``backend.generate(prompts, n=m, ...)`` returns a ``RolloutBatch`` in group layout: response
i * m + j is the j-th sample for prompt i. Prompts are left-padded, responses right-padded
(verl's layout), so ``features.causal_lm_sequence_features`` consumes the batch directly.
Sampling is seeded per call, so a run resumed from a checkpoint draws the same samples.
``backend.sync_weights(model)`` pushes the trainer's weights to the engine after every
optimiser step (a no-op for transformers, which samples from the trained model itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    prompt_ids: Tensor  # [N, P] left-padded
    prompt_mask: Tensor  # [N, P]
    response_ids: Tensor  # [N, R] right-padded
    response_mask: Tensor  # [N, R], 1 on sampled tokens up to and including EOS
    texts: list[str]  # decoded responses, special tokens removed
    sampler_logprobs: Tensor | None = None  # [N, R] log-probs reported by the engine, if any


class RolloutBackend(Protocol):
    def generate(
        self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int
    ) -> RolloutBatch: ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...


def format_prompt(tokenizer, prompt: str, chat_template: bool) -> str:
    """The prompt text, wrapped in the tokenizer's chat template when asked (SimpleRL-Zoo style)."""
    if not chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=True but the tokenizer has no chat template; set chat_template: false")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def encode_prompts(tokenizer, prompts: list[str], chat_template: bool) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask."""
    texts = [format_prompt(tokenizer, p, chat_template) for p in prompts]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return left_pad(rows, tokenizer.pad_token_id)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids, mask


def right_pad(rows: list[list], pad: float, dtype: torch.dtype = torch.long) -> tuple[Tensor, Tensor]:
    width = max(1, max(map(len, rows)))
    ids = torch.full((len(rows), width), pad, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=dtype)
        mask[i, : len(row)] = 1
    return ids, mask


def truncate_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Tokens up to and including the first EOS."""
    for pos, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: pos + 1]
    return tokens


def eos_token_ids(tokenizer, model_config=None) -> set[int]:
    ids = {tokenizer.eos_token_id}
    extra = getattr(model_config, "eos_token_id", None) if model_config is not None else None
    ids |= set(extra) if isinstance(extra, (list, tuple)) else ({extra} if extra is not None else set())
    return {i for i in ids if i is not None}
