"""Rollout back-ends: ``make_rollout(cfg, model, tokenizer)`` picks one by ``cfg.rollout``.

batch.py holds the shared layout (``RolloutBatch``) and helpers; transformers_backend.py and
vllm_backend.py implement ``RolloutBackend``.
"""

from __future__ import annotations

from g2rl_core.rollout.batch import (
    RolloutBackend,
    RolloutBatch,
    encode_prompts,
    eos_token_ids,
    format_prompt,
    left_pad,
    right_pad,
    truncate_at_eos,
)
from g2rl_core.rollout.transformers_backend import TransformersRollout

__all__ = [
    "RolloutBackend",
    "RolloutBatch",
    "TransformersRollout",
    "encode_prompts",
    "eos_token_ids",
    "format_prompt",
    "left_pad",
    "make_rollout",
    "right_pad",
    "truncate_at_eos",
]


def make_rollout(cfg, model, tokenizer) -> RolloutBackend:
    """The back-end named by ``cfg.rollout``: "transformers" (default) or "vllm"."""
    if cfg.rollout == "transformers":
        return TransformersRollout(model, tokenizer, chat_template=cfg.chat_template, batch_size=cfg.rollout_batch_size)
    if cfg.rollout == "vllm":
        from g2rl_core.rollout.vllm_backend import VLLMRollout

        return VLLMRollout(cfg.model, tokenizer, chat_template=cfg.chat_template, seed=cfg.seed)
    raise ValueError(f"rollout = {cfg.rollout!r} is not allowed; choose 'transformers' or 'vllm'")
