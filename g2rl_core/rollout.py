"""Rollout back-ends behind one interface: Hugging Face transformers (default on CPU) and vLLM.

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
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


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


class TransformersRollout:
    """Batched sampling with ``model.generate``; samples from the trained model in place."""

    def __init__(self, model, tokenizer, *, chat_template: bool = False, batch_size: int = 256, return_logprobs: bool = False):
        """``return_logprobs`` keeps the sampler's [N, R, V] logits to report its log-probs (tests, debugging)."""
        self.model, self.tokenizer = model, tokenizer
        self.chat_template, self.batch_size, self.return_logprobs = chat_template, batch_size, return_logprobs
        self.eos = eos_token_ids(tokenizer, model.config)

    @torch.no_grad()
    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed) -> RolloutBatch:
        expanded = [p for p in prompts for _ in range(n)]
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, expanded, self.chat_template)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        responses: list[list[int]] = []
        sampler_logprobs: list[list[float]] = []
        try:
            for start in range(0, len(expanded), self.batch_size):
                ids = prompt_ids[start : start + self.batch_size]
                mask = prompt_mask[start : start + self.batch_size]
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=0,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=sorted(self.eos),
                    return_dict_in_generate=True,
                    output_logits=self.return_logprobs,
                )
                new_tokens = out.sequences[:, ids.shape[1] :]
                for row in new_tokens.tolist():
                    responses.append(truncate_at_eos(row, self.eos))
                if self.return_logprobs:
                    logits = torch.stack(out.logits, dim=1).float() / temperature  # [b, R, V]
                    chosen = torch.log_softmax(logits, -1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
                    sampler_logprobs.extend(chosen.tolist())
        finally:
            torch.random.set_rng_state(generator_state)
            self.model.train(was_training)
        response_ids, response_mask = right_pad(responses, self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        reported = None
        if self.return_logprobs:
            reported = right_pad([lp[: len(r)] for lp, r in zip(sampler_logprobs, responses)], 0.0, torch.float32)[0]
        return RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask, texts, reported)

    def sync_weights(self, model) -> None:
        if model is not self.model:
            raise ValueError("TransformersRollout samples from the model it was built with; pass that model")


def make_rollout(cfg, model, tokenizer) -> RolloutBackend:
    """The back-end named by ``cfg.rollout``: "transformers" (default) or "vllm"."""
    if cfg.rollout == "transformers":
        return TransformersRollout(model, tokenizer, chat_template=cfg.chat_template, batch_size=cfg.rollout_batch_size)
    if cfg.rollout == "vllm":
        from g2rl_core.vllm_rollout import VLLMRollout

        return VLLMRollout(cfg.model, tokenizer, chat_template=cfg.chat_template, seed=cfg.seed)
    raise ValueError(f"rollout = {cfg.rollout!r} is not allowed; choose 'transformers' or 'vllm'")
